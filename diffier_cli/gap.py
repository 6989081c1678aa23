"""`diffier gap`: the training-inference gap and sample quality against an exact score, swept over ω.

With real models the true ε* is unknown, so the paper's claims cannot be checked on them. Here the
data are Gaussian mixtures (models/mixture.py), ε* is closed form, and the "model" has a known
error; the sampler, the loop and the refiners (`refine_eps`, IEC) are the ones the real
subcommands run (this module only supplies a `Backbone`). Per run it measures:

- the accumulated gap Σ_t ‖ε̂_t − ε*_t‖² (ε̂ after guidance and refinement, what the sampler used;
  for IEC the relaxed ε̄ with x_{t−1} = Φ_t(x_t, ε̄), ε* at x_t), averaged over samples;
- Eq. 9's ω*: the ω minimising the gap of the guided prediction, Σ⟨ε* − ε_∅, Δ⟩ / Σ‖Δ‖² with
  Δ = ε_c − ε_∅, the least-squares solution of min_ω ‖ε_∅ + ωΔ − ε*‖² summed along the trajectory;
- quality against the true mixture: mean log-likelihood of the samples under their class's true
  density (exact), and the energy distance to as many true samples (Székely & Rizzo 2013).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from diffier_cli.iec import IEC
from diffier_cli.refine import DiffIER
from diffier_cli.runtime import REFINE_SEED_MIX
from diffier_cli.sampling import Refiner, denoise
from models.mixture import Mixture, MisfitModel

# SD 2.1's scheduler configuration (scaled-linear betas, T = 1000), as models/sd.py gets from the hub.
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                   clip_sample=False, set_alpha_to_one=False, steps_offset=1)


@dataclass
class GapState:
    labels: torch.Tensor
    omega: float
    gap: torch.Tensor  # [N] Σ_t ‖ε̂ − ε*‖²
    projection: torch.Tensor  # [N] Σ_t ⟨ε* − ε_∅, Δ⟩
    spread: torch.Tensor  # [N] Σ_t ‖Δ‖²
    at_x_t: tuple = field(default=())  # (t, ε_c, ε_∅) of the first prediction at t: the one at x_t itself


class MixtureBackbone:
    """The exact-score "model" behind the shared loop: guided ε, identity ε conversions, DDIM."""

    def __init__(self, model: MisfitModel, steps: int):
        from diffusers import DDIMScheduler

        self.model = model
        self.scheduler = DDIMScheduler(**SD_SCHEDULE)
        self.scheduler.set_timesteps(steps)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.double()

    def prepare(self, labels: torch.Tensor, omega: float) -> GapState:
        zeros = torch.zeros(labels.shape[0], dtype=torch.float64)
        return GapState(labels, omega, zeros.clone(), zeros.clone(), zeros.clone())

    def timesteps(self, state: GapState):
        return self.scheduler.timesteps

    def _alpha_bar(self, t) -> float:
        return float(self.alphas_cumprod[int(t)])

    def predict(self, x: torch.Tensor, t, state: GapState) -> torch.Tensor:
        a = self._alpha_bar(t)
        cond = self.model.eps(x, a, state.labels)
        uncond = self.model.eps(x, a, None)
        if not state.at_x_t or state.at_x_t[0] != int(t):  # IEC's re-evaluations at the same t come later
            state.at_x_t = (int(t), cond, uncond)
        # Classifier-free guidance (Ho & Salimans 2022, Eq. 6): ε̂ = ε(∅) + ω (ε(c) − ε(∅)).
        return uncond + state.omega * (cond - uncond)

    def to_eps(self, prediction, x, t, state):
        return prediction

    def from_eps(self, eps, x, t, state):
        return eps.to(x.dtype)

    def step_noise(self, x, t, state: GapState) -> None:
        return None  # DDIM with η = 0

    def step(self, x: torch.Tensor, prediction: torch.Tensor, t, state: GapState, noise=None) -> torch.Tensor:
        # DDIM (Song et al. 2021, Eq. 12), η = 0, diffusers' implementation as in `diffier t2i`.
        return self.scheduler.step(prediction, t, x, eta=0.0, return_dict=False)[0]

    def observe(self, x: torch.Tensor, t, eps: torch.Tensor, state: GapState) -> None:
        """Accumulate the gap of the ε the step used (after refinement) and Eq. 9's sums at x_t."""
        true = self.model.truth.eps(x, self._alpha_bar(t), state.labels)
        projection, spread = guidance_projection(*state.at_x_t[1:], true)
        state.gap += ((eps - true) ** 2).sum(-1)
        state.projection += projection
        state.spread += spread


def guidance_projection(cond: torch.Tensor, uncond: torch.Tensor, true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample (⟨ε* − ε_∅, Δ⟩, ‖Δ‖²) with Δ = ε_c − ε_∅: Eq. 9's ω* is the first summed over
    the second summed, the least-squares ω of min_ω ‖ε_∅ + ωΔ − ε*‖²."""
    delta = cond - uncond
    return ((true - uncond) * delta).sum(-1), (delta * delta).sum(-1)


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """2 E‖X − Y‖ − E‖X − X′‖ − E‖Y − Y′‖ (V-statistic), zero iff the distributions agree."""
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


@dataclass(frozen=True)
class GapRun:
    omega: float
    setting: str  # "baseline", "descent", "ascent" or "iec"
    gap: float
    omega_star: float
    log_likelihood: float
    energy_distance: float


def run_one(backbone: MixtureBackbone, labels: torch.Tensor, x_t: torch.Tensor, truth_samples: torch.Tensor,
            omega: float, refiner: Refiner | None, seed: int, setting: str) -> GapRun:
    """One sampling run over all samples; every setting starts from the same x_T."""
    state = backbone.prepare(labels, omega)
    generators = [torch.Generator().manual_seed((seed + i) ^ REFINE_SEED_MIX) for i in range(labels.shape[0])]
    trajectory = denoise(backbone, state, x_t.clone(), refiner=refiner, generators=generators,
                         observe=lambda x, t, eps: backbone.observe(x, t, eps, state))
    samples = trajectory.sample
    truth = backbone.model.truth
    per_class = [
        (int((labels == k).sum()), energy_distance(samples[labels == k], truth_samples[labels == k]))
        for k in range(truth.classes) if (labels == k).any()
    ]
    return GapRun(
        omega=omega,
        setting=setting,
        gap=float(state.gap.mean()),
        omega_star=float(state.projection.sum() / state.spread.sum()),
        log_likelihood=float(truth.log_prob(samples, labels).mean()),
        energy_distance=sum(n * e for n, e in per_class) / labels.shape[0],
    )


@dataclass(frozen=True)
class GapOptions:
    misfit: str
    misfit_size: float
    omegas: list[float]
    dim: int
    classes: int
    components: int
    sigma: float
    spread: float
    n_samples: int
    steps: int
    eta: float
    threshold: float
    max_iters: int
    seed: int
    diffier: bool = True  # the descent and ascent rows
    iec: IEC | None = None  # an iec row with these settings


def run_benchmark(opts: GapOptions, on_run=None) -> dict:
    """Every (ω, setting) run, and where the gap and the quality are best."""
    problem = torch.Generator().manual_seed(opts.seed)
    truth = Mixture.random(opts.classes, opts.components, opts.dim, opts.sigma, opts.spread, problem)
    direction = torch.randn(opts.dim, generator=problem, dtype=torch.float64)
    model = MisfitModel(truth, opts.misfit, opts.misfit_size, direction / direction.norm())
    backbone = MixtureBackbone(model, opts.steps)
    labels = torch.arange(opts.n_samples) % opts.classes
    x_t = torch.randn(opts.n_samples, opts.dim, generator=torch.Generator().manual_seed(opts.seed + 1), dtype=torch.float64)
    truth_samples = truth.sample(labels, torch.Generator().manual_seed(opts.seed + 2))
    settings: dict[str, Refiner | None] = {"baseline": None}
    if opts.diffier:
        for direction in ("descent", "ascent"):
            settings[direction] = DiffIER(eta=opts.eta, threshold=opts.threshold, max_iters=opts.max_iters, direction=direction)
    if opts.iec is not None:
        settings["iec"] = opts.iec
    runs = []
    with torch.no_grad():
        for omega in opts.omegas:
            for setting, refiner in settings.items():
                runs.append(run_one(backbone, labels, x_t, truth_samples, omega, refiner, opts.seed, setting))
                if on_run is not None:
                    on_run(runs[-1])
    best = {
        setting: {
            "lowest_gap_at_omega": min((r for r in runs if r.setting == setting), key=lambda r: r.gap).omega,
            "highest_log_likelihood_at_omega": max((r for r in runs if r.setting == setting), key=lambda r: r.log_likelihood).omega,
            "lowest_energy_distance_at_omega": min((r for r in runs if r.setting == setting), key=lambda r: r.energy_distance).omega,
        }
        for setting in settings
    }
    baseline = [r for r in runs if r.setting == "baseline"]
    # Eq. 9's ω* depends on the trajectory it is measured along; report the fixed point the sweep
    # brackets (where ω* − ω changes sign), the self-consistent optimum.
    return {"runs": runs, "best": best, "omega_star_fixed_point": _fixed_point(baseline),
            "true_samples_log_likelihood": float(truth.log_prob(truth_samples, labels).mean())}


def _fixed_point(baseline: list[GapRun]) -> float | None:
    """ω where the trajectory's own ω* equals ω, by linear interpolation between grid points."""
    pairs = sorted((r.omega, r.omega_star - r.omega) for r in baseline)
    for (w0, f0), (w1, f1) in zip(pairs, pairs[1:]):
        if f0 == 0:
            return w0
        if f0 * f1 < 0:
            return w0 + (w1 - w0) * f0 / (f0 - f1)
    return pairs[-1][0] if pairs and pairs[-1][1] == 0 else None


def one_step_omega_star(model: MisfitModel, x: torch.Tensor, labels: torch.Tensor, alpha_bar: float) -> float:
    """Eq. 9 at one step: argmin_ω Σ‖ε_∅ + ω(ε_c − ε_∅) − ε*‖², in closed form."""
    projection, spread = guidance_projection(model.eps(x, alpha_bar, labels), model.eps(x, alpha_bar, None),
                                             model.truth.eps(x, alpha_bar, labels))
    return float(projection.sum() / spread.sum())


def table(result: dict):
    """The sweep as a rich table, one row per (ω, setting)."""
    from rich.table import Table

    grid = Table(title="gap Σ_t‖ε̂ − ε*‖² and quality against the true mixture")
    for name in ("ω", "setting", "gap", "log-lik", "energy dist", "Eq. 9 ω*"):
        grid.add_column(name, justify="left" if name == "setting" else "right")
    for r in result["runs"]:
        star = f"{r.omega_star:.3f}" if r.setting == "baseline" else ""
        grid.add_row(f"{r.omega:g}", r.setting, f"{r.gap:.3f}", f"{r.log_likelihood:.3f}", f"{r.energy_distance:.4f}", star)
    return grid


def summary(result: dict) -> list[str]:
    """Where each setting does best, and Eq. 9's self-consistent ω*."""
    lines = [f"true samples' mean log-likelihood: {result['true_samples_log_likelihood']:.3f}"]
    fixed = result["omega_star_fixed_point"]
    lines.append("Eq. 9 ω* = ω along the baseline trajectory at ω = " + (f"{fixed:.3f}" if fixed is not None else "(not bracketed by the sweep)"))
    for setting, best in result["best"].items():
        lines.append(
            f"{setting}: lowest gap at ω = {best['lowest_gap_at_omega']:g}, highest log-likelihood at ω = "
            f"{best['highest_log_likelihood_at_omega']:g}, lowest energy distance at ω = {best['lowest_energy_distance_at_omega']:g}"
        )
    return lines


def plot(result: dict) -> bytes:
    """PNG bytes: gap, log-likelihood and energy distance against ω, one curve per setting."""
    import io

    from matplotlib.figure import Figure  # no pyplot: the Agg canvas, no global backend state

    runs = result["runs"]
    figure = Figure(figsize=(15, 4), layout="constrained")
    axes = figure.subplots(1, 3)
    measures = (("gap", "Σ_t ‖ε̂ − ε*‖² (mean over samples)"), ("log_likelihood", "mean log-likelihood (true density)"),
                ("energy_distance", "energy distance to true samples"))
    for setting in dict.fromkeys(r.setting for r in runs):
        mine = [r for r in runs if r.setting == setting]
        for axis, (key, _) in zip(axes, measures):
            axis.plot([r.omega for r in mine], [getattr(r, key) for r in mine], marker="o", label=setting)
    for axis, (key, label) in zip(axes, measures):
        axis.set(xlabel="ω", ylabel=label)
        if result["omega_star_fixed_point"] is not None:
            axis.axvline(result["omega_star_fixed_point"], color="grey", linestyle="--", label="Eq. 9 ω* = ω")
    axes[1].axhline(result["true_samples_log_likelihood"], color="grey", linestyle=":", label="true samples")
    for axis in axes:
        axis.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
