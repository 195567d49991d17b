"""Launch the trainer on Kubernetes.

`config` holds the validated dataclass configuration, `pod` and `builders`
turn it into typed `kubernetes.client` objects (a single-GPU Job, an Indexed
multi-worker Job with its headless Service, a Kubeflow TFJob), `trainjob`
adds a Kubeflow Trainer v2 TrainJob with its TensorFlow training runtime,
`render` turns those into YAML, `kustomize` keeps `k8s/` equal to them,
`backend` talks to a cluster, `errors` explains API failures, `help_format`
makes the CLI's help show defaults, and `tf_config` is the container
entrypoint that derives `TF_CONFIG` for Indexed Jobs and JobSet pods. Only
`tf_config` (with `cli` and `help_format`) is imported inside the container;
the rest needs the `k8s` extra.
"""
