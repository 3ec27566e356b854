"""Per-configuration statistics, the guided-vs-control verdict and the mechanism, on worked values."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from dcn_ray.core.stats import holm, mean_interval, paired_difference, stratified_permutation_test
from dcn_ray.results.charts import interval_chart, kernel_chart
from dcn_ray.results.report import configuration_markdown
from dcn_ray.results.summary import configuration_results
from dcn_ray.results.verdict import guided_vs_controls, mechanism, round_lines

REF = (4, 8, 16)


def round_of(guided, controls, weak="F3"):
    return {"round": 1, "reference": list(REF), "weak": weak, "votes": [weak] * 3, "agreement": f"{weak} in 3 of 3 seeds",
            "guided": [list(k) for k in guided], "controls": [list(k) for k in controls]}  # fmt: skip


def row(kernels, seed, score, phase="grid", **extra):
    return {"k1": kernels[0], "k2": kernels[1], "k3": kernels[2], "seed": seed, "phase": phase,
            "status": "finished", "test_iou": score, **extra}  # fmt: skip


def test_mean_interval_matches_the_t_formula():
    estimate = mean_interval([0.80, 0.82, 0.84])
    half = stats.t.ppf(0.975, 2) * 0.02 / math.sqrt(3)  # sd 0.02
    assert estimate.n == 3 and estimate.mean == pytest.approx(0.82)
    assert (estimate.low, estimate.high) == (pytest.approx(0.82 - half), pytest.approx(0.82 + half))
    assert half == pytest.approx(0.04968, abs=1e-5)
    single = mean_interval([0.5])
    assert single.n == 1 and math.isnan(single.low) and single.text() == "0.500"


def test_paired_difference_is_the_paired_t_test():
    scores = {0: 0.81, 1: 0.84, 2: 0.80, 3: 0.83}
    reference = {0: 0.80, 1: 0.81, 2: 0.80, 3: 0.80, 9: 0.99}  # seed 9 has no pair: ignored
    paired = paired_difference(scores, reference)
    expected = stats.ttest_rel([0.81, 0.84, 0.80, 0.83], [0.80, 0.81, 0.80, 0.80])
    assert paired.p_value == pytest.approx(expected.pvalue)
    assert paired.estimate.n == 4 and paired.estimate.mean == pytest.approx(0.0175)
    # differences 0.01, 0.03, 0.00, 0.03: sd 0.015, t(3) 3.182 -> half width 0.02387
    assert paired.estimate.high - paired.estimate.mean == pytest.approx(0.023868, abs=1e-5)


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm([]) == []


def test_permutation_test_exact_and_null():
    # one stratum, A = (3, 4), B = (1, 2): of the 6 labellings 2 are as extreme (|diff| = 2)
    assert stratified_permutation_test({0: ([3, 4], [1, 2])}) == pytest.approx(2 / 6)
    # identical groups: every labelling is as extreme as the observed 0
    assert stratified_permutation_test({0: ([1, 1], [1, 1]), 1: ([2], [2])}) == 1.0
    # labels shuffle only within seeds: a seed offset cannot create a difference
    assert stratified_permutation_test({0: ([0.1], [0.1]), 1: ([0.9], [0.9])}) == 1.0


def test_configuration_results_pair_by_seed_and_adjust_across_rows():
    rows = [row(REF, s, v) for s, v in enumerate([0.80, 0.81, 0.80])]
    rows += [row((2, 8, 16), s, v) for s, v in enumerate([0.82, 0.84, 0.83])]
    rows += [row((6, 8, 16), s, v) for s, v in enumerate([0.79, 0.80, 0.81])]
    rows.append({**row((6, 8, 16), 3, 0.99), "status": "errored"})  # not counted
    results = configuration_results(rows, "test_iou", REF)
    assert [r.kernels for r in results] == [REF, (2, 8, 16), (6, 8, 16)]
    ref, better, same = results
    assert ref.difference is None and ref.score.n == 3
    assert better.difference.mean == pytest.approx(0.026667, abs=1e-6)
    assert better.p_value == pytest.approx(stats.ttest_rel([0.82, 0.84, 0.83], [0.80, 0.81, 0.80]).pvalue)
    assert same.score.n == 3
    assert [better.p_holm, same.p_holm] == pytest.approx(holm([better.p_value, same.p_value]))
    table = configuration_markdown(results, "test IoU", REF)
    assert "| 2, 8, 16 | grid | 3 |" in table and "reference" in table


def test_too_few_seeds_give_no_p_value_and_bounded_intervals_stay_bounded():
    # Two seeds, two nearly equal differences: a t-test would call -0.002 "significant" (p ~ 0.005)
    rows = [row(REF, 0, 0.800), row(REF, 1, 0.900), row((2, 8, 16), 0, 0.798), row((2, 8, 16), 1, 0.8981)]
    results = configuration_results(rows, "test_iou", REF)
    _, other = results
    assert other.difference.n == 2 and math.isnan(other.p_value) and math.isnan(other.p_holm)
    table = configuration_markdown(results, "test IoU", REF)
    assert "| n = 2: not meaningful | n = 2: not meaningful |" in table
    # An IoU interval near 1 is cut at 1 (the t interval of 0.99, 0.999, 0.95 reaches past it)
    rows = [row(REF, s, v) for s, v in enumerate([0.99, 0.999, 0.95])]
    (ref,) = configuration_results(rows, "test_iou", REF)
    assert ref.score.high == 1.0 and mean_interval([0.99, 0.999, 0.95]).high > 1.0
    assert ref.score.mean == pytest.approx(0.979667, abs=1e-6)


def test_a_grid_without_the_reference_kernels_has_no_comparison_columns():
    rows = [{**row((None, None, None), s, 0.8 + 0.01 * s), "config": "unet", "model_family": "unet"} for s in range(3)]
    results = configuration_results(rows, "test_iou", REF)
    table = configuration_markdown(results, "test IoU", REF)
    assert "vs 4-8-16" not in table and "p (Holm)" not in table and "| unet | grid | 3 |" in table


def test_report_effect_on_one_seed_says_what_it_needs():
    from dcn_ray.results.power import power_lines

    rows = [row(REF, 0, 0.80), row((2, 8, 16), 0, 0.81)]
    (line,) = power_lines(rows, "test_iou", REF, [], effect=0.005)
    assert "cannot be sized" in line and "1 seed(s)" in line and "--set sweep.seeds=3" in line
    assert power_lines(rows, "test_iou", REF, []) == []  # not asked: nothing said


def test_guided_vs_matched_controls_by_mean_not_best_of():
    rows = [row(REF, s, 0.80) for s in range(3)]
    # guided: one big winner and one loser; their matched controls: small gains. Best-of favours
    # guided, the matched means do not differ.
    for s in range(3):
        rows += [row((4, 8, 14), s, 0.86, "followup"), row((4, 8, 12), s, 0.76, "followup")]
        # 4-8-14 (k3/s -0.25) is matched by 4-7-16 and 4-8-18; 4-8-12 (-0.5) by 4-6-16 and 4-8-20
        rows += [row(k, s, 0.81, "control") for k in ((4, 7, 16), (4, 8, 18), (4, 6, 16), (4, 8, 20))]
    rows += [row((2, 8, 16), s, 0.99, "control") for s in range(3)]  # not matched to any guided: ignored
    controls = [(4, 7, 16), (4, 8, 18), (4, 6, 16), (4, 8, 20), (2, 8, 16)]
    comparison = guided_vs_controls(rows, "test_iou", "test IoU", [round_of([(4, 8, 14), (4, 8, 12)], controls)])
    assert comparison.seeds == 3 and comparison.guided_configs == 2 and comparison.control_configs == 5
    assert comparison.guided.mean == pytest.approx(0.01)
    primary = comparison.primary
    assert primary.kind == "matched" and primary.seeds == 3
    assert primary.difference.mean == pytest.approx(0.0, abs=1e-12)  # (0.05 + -0.05) / 2 per seed
    assert math.isnan(primary.p_value) and primary.p_permutation == 1.0  # no spread: t undefined (never 0)
    assert primary.verdict == "inconclusive"
    assert [c.kind for c in comparison.contrasts] == ["matched", "shrunk", "enlarged"]
    sentence = comparison.sentence()
    assert sentence.startswith("guided +0.010") and "3 seeds" in sentence
    assert "guided minus all matched controls: " in sentence and "0.000 [" in sentence and "inconclusive" in sentence


def test_a_real_guided_effect_is_detected_and_a_null_is_called_equivalent():
    rows = []
    for s in range(6):
        base = 0.80 + 0.01 * s
        rows += [row(REF, s, base), row((4, 8, 14), s, base + 0.03 + 0.001 * s, "followup")]
        rows += [row((4, 7, 16), s, base - 0.01, "control"), row((4, 8, 18), s, base - 0.002 * s, "control")]
    rounds = [round_of([(4, 8, 14)], [(4, 7, 16), (4, 8, 18)])]
    comparison = guided_vs_controls(rows, "test_iou", "test IoU", rounds)
    primary = comparison.primary
    differences = [0.03 + 0.001 * s - (-0.01 - 0.002 * s) / 2 for s in range(6)]
    assert primary.difference.mean == pytest.approx(sum(differences) / 6)
    assert primary.p_value == pytest.approx(stats.ttest_1samp(differences, 0.0).pvalue)
    assert primary.p_permutation == pytest.approx(2 / 64)  # exact: only all-plus and all-minus are as extreme
    assert primary.verdict == "guided better"
    shrunk, enlarged = comparison.contrasts[1:]
    assert shrunk.difference.mean == pytest.approx(fmean_of([0.03 + 0.001 * s + 0.01 for s in range(6)]))
    assert enlarged.difference.mean == pytest.approx(fmean_of([0.03 + 0.001 * s + 0.002 * s for s in range(6)]))
    # a null: guided and controls within +-0.001 of each other in every seed
    null = [r for r in rows if r["phase"] != "followup"] + [
        row((4, 8, 14), s, 0.80 + 0.01 * s - 0.005 - 0.001 * s + (0.0005 if s % 2 else -0.0003), "followup")
        for s in range(6)
    ]
    equal = guided_vs_controls(null, "test_iou", "test IoU", rounds).primary
    assert equal.equivalence.equivalent and equal.verdict == "equivalent within +-0.005"
    assert equal.equivalence.low > -0.005 and equal.equivalence.high < 0.005
    narrow = guided_vs_controls(null, "test_iou", "test IoU", [{**rounds[0], "margin": 0.0001}]).primary
    assert narrow.verdict == "inconclusive"  # the job's margin decides


def fmean_of(values):
    return sum(values) / len(values)


def test_mechanism_reads_the_weak_branch_calibrated_separation_change():
    rows = [row(REF, s, 0.8, calibrated_F3=0.30 + 0.01 * s, mlflow_run_id=f"r{s}") for s in range(3)]
    rows += [
        row((4, 8, 14), s, 0.8, "followup", reference_weak="F3", calibrated_F3=0.35 + 0.01 * s, mlflow_run_id=f"g{s}")
        for s in range(3)
    ]
    found = mechanism(rows, [round_of([(4, 8, 14)], [(4, 8, 18)])])
    assert found.branch == "F3" and found.change.mean == pytest.approx(0.05)
    assert found.observed == "rose" and found.per_run == pytest.approx({"g0": 0.05, "g1": 0.05, "g2": 0.05})
    assert "predicted F3 calibrated separation rises" in found.sentence()
    assert mechanism([row(REF, 0, 0.8)], []) is None
    assert mechanism(rows, [round_of([], [], weak=None)]) is None


def test_arms_count_configurations_that_ran_in_the_grid():
    """Table 1 holds the paper's guided rows as grid trials: they are the guided arm all the same."""
    rows = [row(REF, s, 0.80) for s in range(2)]
    rows += [row((4, 8, 14), s, 0.82) for s in range(2)] + [row((4, 8, 18), s, 0.79) for s in range(2)]
    comparison = guided_vs_controls(
        rows, "test_iou", "test IoU", [round_of([(4, 8, 14), (4, 8, 12)], [(4, 8, 18), (4, 6, 16)])]
    )
    assert (comparison.guided_configs, comparison.control_configs) == (1, 1)  # (4, 8, 12) and (4, 6, 16) never ran
    assert comparison.guided.mean == pytest.approx(0.02) and comparison.controls.mean == pytest.approx(-0.01)
    assert comparison.primary.difference.mean == pytest.approx(0.03)
    (line,) = round_lines([round_of([(4, 8, 14)], [(4, 8, 18)])])
    assert line == (
        "round 1: weak branch of 4-8-16 (lowest calibrated separation): F3 in 3 of 3 seeds; guided 4-8-14; "
        "matched controls 4-8-18"
    )


def test_power_statement_matches_the_noncentral_t_and_a_simulation():
    import numpy as np

    from dcn_ray.core.stats import detectable_effect, paired_power, seeds_needed
    from dcn_ray.results.power import power_lines

    # textbook values (Cohen 1988): a paired t-test of d = 0.5 needs 34 pairs for power 0.8
    assert seeds_needed(0.5, 1.0) == 34 and paired_power(34, 0.5, 1.0) >= 0.8 > paired_power(33, 0.5, 1.0)
    assert paired_power(20, 0.5, 1.0) == pytest.approx(0.5645, abs=1e-3)
    rng = np.random.default_rng(0)
    samples = rng.normal(0.5, 1.0, size=(20000, 20))
    p = stats.ttest_1samp(samples, 0.0, axis=1).pvalue
    assert float(np.mean(p < 0.05)) == pytest.approx(paired_power(20, 0.5, 1.0), abs=0.015)
    assert paired_power(12, detectable_effect(12, 0.01), 0.01) == pytest.approx(0.8, abs=1e-6)
    rows = [row(REF, s, 0.80 + 0.01 * (s % 3)) for s in range(6)]
    rows += [row((2, 8, 16), s, 0.80 + 0.01 * (s % 3) + (0.004 if s % 2 else -0.004)) for s in range(6)]
    (line,) = power_lines(rows, "test_iou", REF, [], effect=0.005)
    sd = float(np.std([0.004 if s % 2 else -0.004 for s in range(6)], ddof=1))
    assert f"sd of one paired difference {sd:.4f} (5 df)" in line
    assert f"{detectable_effect(6, sd):.4f}" in line and f"needs {seeds_needed(0.005, sd)} seeds" in line


def test_charts_are_written(tmp_path):
    rows = [row(REF, s, 0.8 + 0.01 * s) for s in range(3)] + [row((4, 8, 14), s, 0.82, "followup") for s in range(3)]
    results = configuration_results(rows, "test_iou", REF)
    for path in (
        interval_chart(results, tmp_path / "a.png", REF, "test IoU"),
        kernel_chart(results, tmp_path / "b.png", "test IoU"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_the_verdict_reports_guided_minus_sham_paired_by_seed():
    rows, rounds = [], [{**round_of([(4, 8, 12)], [(3, 8, 16)]), "sham": "4-8-16~sham-F3"}]
    for s in range(5):
        base = 0.80 + 0.01 * s
        rows += [row(REF, s, base), row((4, 8, 12), s, base + 0.004 + 0.001 * s, "followup")]
        rows += [row((3, 8, 16), s, base - 0.002, "control")]
        rows += [row(REF, s, base + 0.003, "sham", config="4-8-16~sham-F3")]  # the re-drawn start alone gains
    comparison = guided_vs_controls(rows, "test_iou", "test IoU", rounds)
    sham = comparison.contrasts[-1]
    differences = [0.001 + 0.001 * s for s in range(5)]
    assert sham.kind == "sham" and sham.seeds == 5
    assert sham.difference.mean == pytest.approx(sum(differences) / 5)
    assert sham.p_value == pytest.approx(stats.ttest_1samp(differences, 0.0).pvalue)
    assert "guided minus sham (kernels kept, start re-drawn): +0.003" in comparison.sentence()
    assert comparison.primary.kind == "matched"  # the sham's rows are not the reference's
    assert comparison.primary.difference.mean == pytest.approx(0.006 + 0.002)
    assert "sham 4-8-16~sham-F3" in round_lines(rounds)[0]


def test_a_round_with_a_sham_and_no_matched_control_still_has_a_verdict():
    rows, rounds = [], [{**round_of([(4, 8, 12)], []), "sham": "4-8-16~sham-F3"}]
    for s in range(3):
        rows += [row(REF, s, 0.80), row((4, 8, 12), s, 0.81 + 0.001 * s, "followup")]
        rows += [row(REF, s, 0.805, "sham", config="4-8-16~sham-F3")]
    comparison = guided_vs_controls(rows, "test_iou", "test IoU", rounds)
    assert [c.kind for c in comparison.contrasts] == ["sham"] and comparison.primary.seeds == 3
    assert comparison.primary.difference.mean == pytest.approx(0.006)
    assert "vs matched controls n/a" in comparison.sentence()
