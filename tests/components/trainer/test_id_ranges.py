"""Each feature's ids are checked against its own vocabulary size (issue 11, item 9).

With the shared table, feature i reads rows offset_i + id; an id at or past
its own size used to read feature i+1's rows silently, in training and in
serving, because only the table's total size was checked.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from components.preprocess.metadata import ExamplesLayout
from components.trainer.fn_args import TrainerConfig
from components.trainer.model import build_model
from components.trainer.run import run_fn
from tests.components.trainer.served_model import export_random_model
from tests.components.trainer.test_errors import fn_args_with_metadata


def _features(metadata, cat3):
    features = {metadata.dense_key: tf.zeros([1, metadata.num_dense])}
    features.update({key: tf.zeros([1], tf.int64) for key in metadata.categorical_keys})
    features["cat_3"] = tf.constant([cat3], tf.int64)
    return features


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return export_random_model(str(tmp_path_factory.mktemp("ids")), "hash")


def test_shared_table_refuses_an_id_past_its_feature(served):
    size = served.metadata.vocab_sizes["cat_3"]
    model = build_model(served.metadata, TrainerConfig(embedding_dim=4, bottom_mlp=(8,), top_mlp=(8,)))
    model(_features(served.metadata, size - 1))  # the last row of cat_3 is fine
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"feature cat_3: ids must be in \[0, {size}\)"):
        model(_features(served.metadata, size))  # row `size` of cat_3 would be row 0 of cat_4


def test_serve_transformed_refuses_an_id_past_its_feature(served):
    size = served.metadata.vocab_sizes["cat_3"]
    example = tf.train.Example()
    feature = example.features.feature
    feature["dense"].float_list.value.extend([0.0] * 13)
    for i in range(26):
        feature[f"cat_{i}"].int64_list.value.append(size if i == 3 else 0)
    serve = tf.saved_model.load(served.export_dir).signatures["serve_transformed"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="feature cat_3"):
        serve(examples=tf.constant([example.SerializeToString()]))


def test_training_data_past_one_features_size_is_an_error_naming_it(planted_data, tmp_path):
    import glob

    ids = np.concatenate([
        [tf.train.Example.FromString(r.numpy()).features.feature["cat_3"].int64_list.value[0]
         for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
        for path in glob.glob(ExamplesLayout(planted_data).train_pattern)])
    assert ids.max() >= 2  # the data really has ids the shrunk metadata does not allow

    def shrink_cat_3(meta):
        meta["vocab_sizes"]["cat_3"] = 2  # the total table stays far larger than any shifted id

    with pytest.raises(ValueError, match="feature cat_3: ids must be in"):
        run_fn(fn_args_with_metadata(planted_data, tmp_path, shrink_cat_3))


def test_nan_in_the_dense_input_is_named(served):
    model = build_model(served.metadata, TrainerConfig(embedding_dim=4, bottom_mlp=(8,), top_mlp=(8,)))
    features = _features(served.metadata, 0)
    features["dense"] = tf.constant([[float("nan")] + [0.0] * 12])
    with pytest.raises(tf.errors.InvalidArgumentError, match="feature dense: NaN or Inf in the input"):
        model(features)


def test_training_error_keeps_the_assertion_not_the_traceback():
    from components.trainer.tf_errors import training_error

    message = ("Graph execution error:\n\nDetected at node x defined at (most recent call last):\n  File a.py\n" * 30
               + "assertion failed: [feature cat_3: ids must be in [0, 2) (its vocabulary size in the metadata); got min]"
               " [0] [max] [7]\n\t [[{{node Assert}}]]")
    text = training_error(message, "m.json")
    assert text == ("the training data does not match the metadata at m.json: [feature cat_3: ids must be in [0, 2) "
                    "(its vocabulary size in the metadata); got min] [0] [max] [7]")
    assert training_error("assertion failed: [feature dense: NaN or Inf in the input]", "m.json") == (
        "training stopped: [feature dense: NaN or Inf in the input]")


@pytest.mark.parametrize("flag", ["--batch-size", "--train-steps", "--eval-steps", "--embedding-dim",
                                  "--checkpoint-every", "--log-every"])
def test_cli_refuses_a_count_below_one_with_a_usage_error(flag, tmp_path, capsys):
    """`--batch-size 0` ended in ZeroDivisionError (issue 11, item 11); every count flag is checked by argparse."""
    from components.trainer import cli

    argv = ["--data", str(tmp_path), "--output", str(tmp_path / "o"), "--train-steps", "2", flag, "0"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert f"argument {flag}: expected an integer >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("inside", [False, True])
def test_an_output_that_is_a_file_is_refused_before_training(planted_data, tmp_path, inside):
    from tests.components.trainer.test_run_fn import make_fn_args

    (tmp_path / "afile").write_text("x")
    fn_args = make_fn_args(planted_data, str(tmp_path), steps=2)
    fn_args.model_run_dir = str(tmp_path / "afile" / "run") if inside else str(tmp_path / "afile")
    with pytest.raises(ValueError, match=f"model_run_dir .*{tmp_path / 'afile'}' is a file, not a directory"):
        run_fn(fn_args)


def test_training_error_of_another_op_keeps_its_last_line():
    from components.trainer.tf_errors import training_error

    message = ("Graph execution error:\n\nDetected at node x defined at (most recent call last):\n"
               "  File \"run.py\", line 9, in run_fn\n\nCollective ops is aborted by: instance key mismatch\n"
               "\t [[{{node CollectiveReduceV2}}]] [Op:__inference_train_step_42]")
    assert training_error(message, "m.json") == "training stopped: Collective ops is aborted by: instance key mismatch"
