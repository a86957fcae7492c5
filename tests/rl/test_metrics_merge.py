"""A GRPO step's metrics from its minibatches' optimizer steps: counts add up, everything else is averaged."""

from __future__ import annotations

import pytest

from memrl.rl.step import merge_minibatch_metrics


def test_counts_are_summed_and_other_metrics_averaged_over_minibatches_by_hand():
    first = {"loss": 0.5, "pg_loss": 0.25, "grad_norm": 2.0, "lr": 1e-4, "train_tokens": 100.0, "contexts": 6.0,
             "skipped": 0.0, "staleness_0": 2.0, "staleness_1": 4.0, "offpolicy_tokens": 30.0,
             "offpolicy_clip_frac": 0.1}
    second = {"loss": 1.5, "pg_loss": 0.75, "grad_norm": 4.0, "lr": 1e-4, "train_tokens": 60.0, "contexts": 4.0,
              "skipped": 1.0, "staleness_0": 3.0, "staleness_1": 1.0, "offpolicy_tokens": 10.0,
              "offpolicy_clip_frac": 0.3}
    merged = merge_minibatch_metrics([first, second])
    assert merged == pytest.approx({
        "loss": 1.0, "pg_loss": 0.5, "grad_norm": 3.0, "lr": 1e-4, "offpolicy_clip_frac": 0.2,  # means
        "train_tokens": 160.0, "contexts": 10.0, "skipped": 1.0, "staleness_0": 5.0, "staleness_1": 5.0,  # sums
        "offpolicy_tokens": 40.0,
    })
    assert list(merged) == list(first)  # keys in first-seen order


def test_a_minibatch_with_no_tokens_counts_as_skipped_and_does_not_dilute_the_means():
    trained = {"loss": 0.8, "train_tokens": 50.0, "contexts": 3.0, "skipped": 0.0}
    empty = {"skipped": 1.0, "reason_no_tokens": 1.0}  # what `run_step` returns for a minibatch with no loss token
    merged = merge_minibatch_metrics([trained, empty])
    assert merged == pytest.approx({"loss": 0.8, "train_tokens": 50.0, "contexts": 3.0, "skipped": 1.0,
                                    "reason_no_tokens": 1.0})


def test_one_minibatch_is_returned_unchanged():
    only = {"loss": 0.3, "train_tokens": 12.0, "staleness_0": 2.0, "grad_norm": 1.5}
    assert merge_minibatch_metrics([only]) == only
