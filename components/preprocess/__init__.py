"""Preprocess component: synthetic Criteo-like logs and a Beam pipeline that
turns logs into GZIP TFRecords of `tf.Example`s in TFX ExampleGen layout.

Modules:
  metadata   key names, `ExamplesLayout`, feature spec and `metadata.json` (the trainer's contract)
  spec       `PreprocessSpec`: the component's parameters, validated once
  synth      `embedopt synth`: Criteo-format TSV with a planted logistic truth
  rows       parsing and validation of one raw row (pure functions)
  bags       multi-hot (bag) columns: the element rules, caps, Arrow helpers
  columns    a batch of raw lines -> column arrays (fast path in pyarrow, slow path row by row)
  parquet_rows / parquet_source  Parquet: schema rules, a batch of rows -> columns; reading by row groups
  sources    Beam transforms reading text files with exact line numbers
  tfds_source  Beam transform reading a TFDS dataset into the same row form
  vocab      vocabularies (top-N / min frequency) and hashing
  encode     rows -> serialized `tf.Example` and the deterministic split
  plan       input checks and shard sizing before the pipeline starts
  flags      `embedopt preprocess`'s parser: flags -> spec
  pipeline   `execute(spec)`: the Beam pipeline and metadata.json
  reader     `tf.data` input for the trainer
"""
