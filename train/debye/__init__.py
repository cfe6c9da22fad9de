"""CLOUD-DEBYE training and evaluation: θ_D from the encoder, C_v(T) and U(T) from physics.

Data (targets computed from real phonon data, per mole of the cell whose atoms are counted):

* ``petretto``: Petretto et al. (2018) DFPT phonon DOS. C_v(T) and U(T) (harmonic, zero-point
  energy included) are integrated from each DOS (``cloud.phonons``), per mole of the cell of
  the CSV's structure; n_atoms = its number of sites. The DOS is tabulated every 20 cm⁻¹
  (29 K), so the "true" curves below ~30 K are set by the lowest bins, not by real physics.
  The released idx_*.txt splits do not fit data.csv (1,522 indices for 1,521 rows) and are not
  used: the split here is our own, seeded, by material (see ``split_materials``).
* ``phonondb``: Togo's phonopy C_v and U per mole of atoms, multiplied by ``natoms_unitcell``:
  the structure encoded is phonondb's unit cell (the one in structures.jsonl.gz, which can be
  larger than the primitive cell phonopy used), so the targets are per mole of unit cells and
  n_atoms = natoms_unitcell. Materials with an imaginary mode below ``stability_threshold_thz``
  (−0.3 THz) are left out, since their harmonic thermodynamics is not meaningful. Temperatures
  off phonondb's 10 K grid are linearly interpolated.

The SCOPE string of a material does not depend on which cell of it is written, so the model
predicts one θ_D per material; n_atoms only scales C_v and U. Every loss is therefore per atom
and dimensionless: c = C_v / (3 n R) ∈ [0, 1] and u = U / (3 n R T_ref) (≈ 1 at T_ref = 300 K
for a classical solid), so materials of any size and every temperature weigh alike.

Protocols: ``single`` is the paper's (C_v at 300 K only); ``curve`` fits C_v, U or both on a
temperature grid (the paper did not). Splits are seeded by material: train/val/test fractions,
or fold K of a seeded 5-fold cross-validation with validation carved from the other folds.
Training is AdamW with warm-up and cosine decay, early stopping on the validation loss, the
best epoch's weights kept. Optionally the model is first trained on AFLOW AGL Debye
temperatures (log-θ L1), leaving out AFLOW rows whose SCOPE string is a test material's.

Evaluation on the test materials, 10–1000 K: CLOUD-DEBYE, and with ``compare`` the same
encoder under the single-temperature protocol, a direct MLP regressor of C_v at 300 K (it
can say nothing at other temperatures, nor about U), the best constant θ of the training set,
the per-material oracle Debye fit to the true C_v curve over the evaluation grid (least
squares: what the Debye form can do over the whole curve), and the per-material θ that
reproduces C_v(300 K) exactly (the best case of the single-temperature protocol).

A run is long (a full Petretto epoch takes tens of seconds on a CPU, and ``compare`` trains
up to three models), so it reports and keeps its work as it goes: a tqdm bar or periodic log
lines within each epoch and one line per epoch (``fit``); the outputs written, partial, as
soon as the baselines are known and again after each trained unit (``run_debye``); finished
units and the state after each epoch of the unit in training under <out>/progress/, so that
a rerun with the same out directory resumes where the last one stopped (``RunProgress``).

The package's rooms: ``options`` (what the command line and the engine share, without
torch), ``config`` (``DebyeTrainConfig``), ``data`` (the thermal data, the split by
material), ``training`` (targets, loss, ``fit``), ``state`` (a loop's state between epochs),
``methods`` (CLOUD-DEBYE and the methods compared), ``evaluation`` (MAEs on the test
materials), ``context`` (what a run's stages share), ``progress`` (resuming), ``run`` (a whole
run), ``outputs``, ``report`` and ``figures``. The names below are the public API; each is
imported from its room when first used, so ``import train.debye`` costs nothing until then
and ``cloud --help`` stays instant.
"""

from __future__ import annotations

from train.common.exports import lazy_exports

ROOMS: dict[str, tuple[str, ...]] = {
    "options": (
        "COMPARE_METHODS",
        "MAX_TEMPERATURE_POINTS",
        "PROTOCOLS",
        "SINGLE_TEMPERATURE",
        "SOURCES",
        "TARGETS",
        "parse_temperatures",
    ),
    "config": (
        "LOSSES",
        "TEMPERATURE_SPEC_FIELDS",
        "DebyeTrainConfig",
        "config_from_dict",
        "load_config",
    ),
    "data": (
        "CurveFunction",
        "MaterialSplit",
        "ThermalData",
        "load_thermal_data",
        "resolve_data_root",
        "split_materials",
    ),
    "training": (
        "THREE_R",
        "EpochProgress",
        "FitHistory",
        "combine_targets",
        "debye",
        "debye_normalised",
        "encode_scopes",
        "fit",
        "normalised_targets",
        "target_loss",
    ),
    "state": (
        "STATE_RECORD_KEY",
        "FitProgress",
        "load_fit_state",
        "load_state_tensors",
        "read_state",
        "save_fit_state",
        "state_tensors",
        "unprefixed",
        "write_state",
    ),
    "methods": (
        "Encoded",
        "fit_constant_theta",
        "heat_capacity_per_atom_grid",
        "make_batch",
        "oracle_theta",
        "predict_theta",
        "pretrain_on_aflow",
        "train_cloud_debye",
        "train_direct_cv300",
    ),
    "evaluation": (
        "KJ_PER_J",
        "MethodCurves",
        "absolute_errors",
        "debye_curves",
        "summarise_method",
    ),
    "context": (
        "DebyeRunResult",
        "RunContext",
        "prepare_run",
    ),
    "progress": (
        "PROGRESS_DIR",
        "RESUME_IGNORES",
        "RUN_FILE",
        "RunProgress",
        "UnitResult",
        "run_fingerprint",
        "tensor_digest",
    ),
    "run": (
        "METHOD_ORDER",
        "aflow_unit",
        "baseline_methods",
        "cloud_debye_unit",
        "constant_theta_method",
        "direct_method",
        "direct_unit",
        "oracle_300_method",
        "output_directory",
        "run_debye",
        "single_protocol_unit",
        "trained_units",
    ),
    "outputs": (
        "PREDICTIONS_FILE",
        "REPORT_FILE",
        "RESULTS_FILE",
        "run_metrics",
        "save_debye_model",
        "write_outputs",
        "write_predictions",
    ),
    "report": (
        "render_report",
        "results_table",
    ),
    "figures": (
        "plot_mae_vs_temperature",
        "plot_material_curves",
        "plot_theta_parity",
        "write_figures",
    ),
}
"""Each public name of the package, by the room that holds it (``debye`` is
``cloud.debye`` and ``make_batch`` ``train.common.batching.make_batch``, as the module
this package replaces exposed them)."""

__all__ = sorted(name for names in ROOMS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, ROOMS)
