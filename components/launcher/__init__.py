"""Launch the trainer on Kubernetes.

`config` holds the validated dataclass configuration, `pod` and `builders`
turn it into typed `kubernetes.client` objects (a single-GPU Job, an Indexed
multi-worker Job with its headless Service, a Kubeflow TFJob), `render` turns
those into YAML, `kustomize` keeps `k8s/` equal to them, `backend` talks to a
cluster, `errors` explains API failures, and `tf_config` is the container
entrypoint that derives `TF_CONFIG` for Indexed Jobs. Only `tf_config` is
imported inside the container; the rest needs the `k8s` extra.
"""
