"""The few lines `embedopt train` ends with, from a run's metrics (all numbers: metrics.json)."""

from __future__ import annotations

import os

from components.trainer.dynamic_tables import report_lines

PROG = "embedopt train"

SUMMARY_KEYS = ("steps", "resumed_from_step", "eval_auc", "eval_log_loss", "mean_step_seconds", "examples_per_second",
                "strategy", "num_workers", "weights_checksum")


def _stopping_line(metrics: dict, auto_batch: bool) -> str:
    stopping = metrics.get("stopping", {})
    batch = f"batch {metrics['global_batch_size']:,}" + (" (auto, from the train rows)" if auto_batch else "")
    if stopping.get("mode") != "early_stopping":
        return f"{batch}; " + ("fixed --train-steps" if stopping.get("mode") == "train_steps"
                               else f"one pass ({stopping.get('reason', 'no eval split')})")
    why = (f"no gain in {stopping['patience']} evaluations" if stopping["reason"] == "patience"
           else f"--max-epochs {stopping['max_epochs']} reached")
    return (f"{batch}, {stopping['steps_per_epoch']:,} steps per pass; early stopping after epoch "
            f"{stopping['evaluations'][-1]['epoch']} ({why}); exported the best, epoch {stopping['best_epoch']} "
            f"(step {stopping['best_step']:,})")


def _baseline_lines(metrics: dict) -> list[str]:
    if metrics.get("baseline_auc") is None:
        return []
    rates = metrics["positive_rate"]
    l2 = f" (l2 {metrics['baseline_l2']:g}, chosen on a holdout)" if metrics.get("baseline_l2") is not None else ""
    lines = [f"  baseline: hashed logistic regression{l2}, eval AUC {metrics['baseline_auc']:.4f}, log loss "
             f"{metrics['baseline_log_loss']:.4f} (positive rate train {rates['train']:.3f}, eval {rates['eval']:.3f})"]
    if metrics.get("baseline_warning"):
        lines.append(f"  WARNING: {metrics['baseline_warning']}")
    return lines


def report(metrics: dict, run_dir: str, auto_batch: bool = False) -> str:
    """The few lines a run ends with: quality against the baseline, how it stopped, speed, and where its outputs
    are (all numbers: metrics.json)."""
    from components.trainer import artifacts

    if metrics.get("eval_auc") is None:
        quality = f"no evaluation: {metrics.get('eval_note', 'empty eval split')}"
    else:
        quality = (f"eval AUC {metrics['eval_auc']:.4f}, log loss {metrics['eval_log_loss']:.4f} on "
                   f"{metrics['eval_examples']:,} examples (positive rate {metrics['eval_positive_rate']:.3f})")
    resumed = f", resumed at step {metrics['resumed_from_step']:,}" if metrics["resumed_from_step"] else ""
    speed = (f"{metrics['steps_this_run']:,} steps in {metrics['train_seconds']:.1f} s, "
             f"{metrics['mean_step_seconds'] * 1e3:.1f} ms/step, {metrics['examples_per_second']:,.0f} examples/s"
             if metrics["steps_this_run"] else "no step left to run")
    strategy = metrics["strategy"]
    placement = ("one device" if strategy.startswith("_Default")
                 else f"{strategy}, {metrics['num_workers']} workers" if metrics["num_workers"] > 1
                 else f"{strategy}, {metrics['num_replicas']} replicas")
    where = [("SavedModel", metrics["serving_model_dir"]),
             ("metrics", os.path.join(run_dir, artifacts.METRICS_FILE)),
             ("curve", metrics.get("training_curve") or "(not drawn: matplotlib is missing)"),
             ("TensorBoard", f"tensorboard --logdir {os.path.join(run_dir, artifacts.LOGS_DIR)}")]
    apply_path = f"; sparse apply: {metrics['apply_path']}" if metrics.get("apply_path") else ""
    if metrics.get("embedding_exchange"):
        apply_path += f"; exchange: {metrics['embedding_exchange']}"
    lines = [f"{PROG}: step {metrics['steps']:,} reached ({speed}{resumed}); {placement}; "
             f"tables {metrics['table_sharding']}{apply_path}",
             f"  {quality}", *_baseline_lines(metrics), f"  {_stopping_line(metrics, auto_batch)}",
             *report_lines(metrics)]
    lines += [f"  {name:<12}{path}" for name, path in where]
    return "\n".join(lines)
