"""Preprocess component: synthetic Criteo-like logs and a Beam pipeline that
turns logs into GZIP TFRecords of `tf.Example`s in TFX ExampleGen layout.

Modules:
  metadata   key names, `ExamplesLayout`, feature spec and `metadata.json` (the trainer's contract)
  spec       `PreprocessSpec`: the component's parameters, validated once
  synth      `embedopt synth`: Criteo-format TSV with a planted logistic truth
  rows       parsing and validation of one raw row (pure functions)
  sources    Beam transforms reading text files with exact line numbers
  tfds_source  Beam transform reading a TFDS dataset into the same row form
  vocab      vocabularies (top-N / min frequency) and hashing
  encode     rows -> serialized `tf.Example` and the deterministic split
  plan       input checks and shard sizing before the pipeline starts
  pipeline   `embedopt preprocess`: flags -> spec, and `execute(spec)`: pipeline, metadata
  reader     `tf.data` input for the trainer
"""
