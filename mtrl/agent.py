"""The BRC agent: critic/target/actor/temperature and the §2.2 update."""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtrl import math as brc_math
from mtrl.config import AgentConfig
from mtrl.fused_bronet import check_cpu_bf16
from mtrl.networks import Actor, Critic
from mtrl.normalizer import reward_denominator
from mtrl.optim import FusedAdamW, fused_kernel_step
from mtrl.precision import check_tf32_device, cuda_matmul_precision

try:  # fused kernels of the kernel component (issue 3); mtrl.math is the reference path
    from mtrl import ops as _ops
except ImportError:  # pragma: no cover - depends on which components are built
    _ops = None

METRIC_NAMES = (
    "critic_loss", "actor_loss", "temperature_loss", "alpha", "entropy", "q_target_mean",
    "q_mean", "reward_mean",
)


@dataclass
class Batch:
    """One minibatch on the agent's device. Shapes: obs/next_obs (B, O), action (B, A), reward
    (raw, §5.3) / mask / discount (B,) float32, task_id (B,) int64."""

    obs: Tensor
    action: Tensor
    reward: Tensor
    next_obs: Tensor
    mask: Tensor
    discount: Tensor
    task_id: Tensor


def _in_matmul_precision(method):
    """Runs an agent method (its forwards, backward and optimizer step) under the agent's float32
    matmul precision, BRCAgent._matmul_precision."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._matmul_precision():
            return method(self, *args, **kwargs)
    return wrapper


def fused_ops_available() -> bool:
    """Whether mtrl.ops provides the fused categorical TD target and cross-entropy."""
    return _ops is not None and hasattr(_ops, "categorical_td_target") and hasattr(
        _ops, "categorical_cross_entropy")


@functools.cache
def _cuda_kernels_built() -> bool:
    """Whether mtrl._core holds the CUDA TD kernels (a build that found no nvcc is CPU-only)."""
    import mtrl

    return mtrl.cuda_built()


class BRCAgent(nn.Module):
    """Critic ensemble (with task embeddings), Polyak target, tanh-Gaussian actor and one shared
    temperature, trained per brc-spec §2.2.

    Args:
        config: AgentConfig.
        obs_dim, action_dim: padded sizes (§5.2). num_tasks: 1 means single-task (no embedding).
    """

    def __init__(self, config: AgentConfig, obs_dim: int, action_dim: int, num_tasks: int):
        super().__init__()
        if config.bf16 and not torch.cuda.is_available():
            check_cpu_bf16()  # the agent will run on this CPU (ValueError without AMX/AVX512-BF16)
        if not torch.cuda.is_available():  # the agent will run on this CPU
            check_tf32_device(config.tf32, "cpu", "this agent runs on cpu")
        self.config = config
        self.obs_dim, self.action_dim, self.num_tasks = obs_dim, action_dim, num_tasks
        self.critic = Critic(
            obs_dim, action_dim, num_tasks, width=config.critic_width, depth=config.critic_depth,
            num_atoms=config.num_atoms, ensemble_size=config.ensemble_size,
            embedding_dim=config.embedding_dim)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)  # §11.4
        self.actor = Actor(obs_dim, action_dim, self.critic.embedding_dim,
                           width=config.actor_width, depth=config.actor_depth)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(config.init_temperature)))
        self.register_buffer("atoms", brc_math.atoms_support(config.v_min, config.v_max, config.num_atoms))
        self.target_entropy = -action_dim / 2.0  # padded |A| (§2.4, §5.2)
        self.use_fused = bool(config.fused_ops and fused_ops_available())
        self._cpu_bf16_checked = False
        # Parameter lists walked every update (Polyak targets, actor backward), built once: the
        # Parameter objects persist through .to(device) and load_state_dict (in-place copies).
        self._target_params = list(self.target_critic.parameters())
        self._actor_params = list(self.actor.parameters())
        self._build_optimizers()
        # Plain attributes (not submodules) so state_dict keys stay the same with compile on.
        object.__setattr__(self, "_critic_fwd", self.critic)
        object.__setattr__(self, "_target_fwd", self.target_critic)
        if config.compile:  # the critic is where the FLOPs are (§11.13)
            object.__setattr__(self, "_critic_fwd", torch.compile(self.critic))
            object.__setattr__(self, "_target_fwd", torch.compile(self.target_critic))

    def _build_optimizers(self) -> None:
        cfg = self.config
        # §11.1: AdamW weight decay 1e-4 on every parameter (biases, LayerNorm, embedding too).
        # FusedAdamW: one C++ pass on CPU (torch's fused AdamW elsewhere), same state and math.
        self.critic_optimizer = FusedAdamW(
            self.critic.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.actor_optimizer = FusedAdamW(
            self.actor.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.temperature_optimizer = torch.optim.Adam(
            [self.log_alpha], lr=cfg.temperature_lr, betas=(cfg.temperature_beta1, 0.999),
            fused=True)

    # ---------------------------------------------------------------- acting
    @property
    def alpha(self) -> Tensor:
        """Current temperature alpha = exp(log alpha), detached 0-d tensor."""
        return self.log_alpha.detach().exp()

    @torch.no_grad()
    @_in_matmul_precision
    def act(self, obs: Tensor, task_id: Tensor, deterministic: bool = False) -> Tensor:
        """Actions (B, A) in [-1, 1] for padded obs (B, O) of tasks task_id (B,) (§2.3)."""
        self._check_task_ids(task_id)
        return self.actor.act(obs, self.critic.embed(task_id), deterministic)

    def _check_task_ids(self, task_id: Tensor) -> None:
        """Task ids must be integers in [0, num_tasks): torch's indexing would take -1 as the
        last task's embedding / reward denominator, silently. Checked on the CPU only (a CUDA
        check would synchronise the stream on every call)."""
        dtype = task_id.dtype
        if dtype.is_floating_point or dtype.is_complex or dtype is torch.bool:
            raise ValueError(f"task_id must be an integer tensor, got {dtype}")
        if task_id.is_cpu and task_id.numel():
            low, high = map(int, torch.aminmax(task_id))
            if low < 0 or high >= self.num_tasks:
                bad = low if low < 0 else high
                raise ValueError(f"task_id {bad} out of range for {self.num_tasks} task(s)")

    def reward_denominator(self, return_scale: Tensor) -> Tensor:
        """Per-task divisors D (T,) from G_bar (T,) with the current alpha (§4.2)."""
        return reward_denominator(return_scale, self.alpha, self.action_dim, self.config.gamma,
                                  self.config.v_max)

    # ---------------------------------------------------------------- update
    def _matmul_precision(self):
        """The float32 matmul precision of the agent's CUDA work (AgentConfig.tf32), set around
        each call and restored after it (mtrl.precision). A trap §11 does not list: JAX's default
        precision lets float32 dots run in TF32 on Ampere and later GPUs, so the released
        "float32" code ran TF32 matmuls there, while PyTorch's default is IEEE float32."""
        device = self.atoms.device
        # (a CPU agent built where CUDA exists was not refused at init)
        check_tf32_device(self.config.tf32, device, f"this agent runs on {device.type}")
        if device.type == "cuda":
            return cuda_matmul_precision(self.config.tf32)
        return contextlib.nullcontext()

    def _autocast(self):
        """The critic's precision (AgentConfig.bf16): bf16 autocast on CUDA; on the CPU the same
        autocast, under which the critic takes mtrl.fused_bronet's bf16 path. bf16 off: autocast
        disabled, i.e. nothing to do unless the caller's autocast is on (~6 us a context)."""
        device = self.atoms.device.type
        if not self.config.bf16 and not torch.is_autocast_enabled(device):
            return contextlib.nullcontext()
        if device == "cpu" and self.config.bf16 and not self._cpu_bf16_checked:
            check_cpu_bf16()  # (a CPU agent built where CUDA exists was not checked at init)
            self._cpu_bf16_checked = True
        return torch.autocast(device, dtype=torch.bfloat16,
                              enabled=self.config.bf16 and device in ("cuda", "cpu"))

    def _fused_on(self, t: Tensor) -> bool:
        """Whether the fused ops take t's device: the CPU always, CUDA where mtrl was built with
        its CUDA kernels. Elsewhere mtrl.math computes the same (a CPU-only build on a CUDA
        machine once failed at the first update, after the warm-up)."""
        return self.use_fused and (t.is_cpu or _cuda_kernels_built())

    def _td_target(self, target_logits, reward, mask, discount, entropy):
        cfg = self.config
        # non-finite samples propagate and are counted per task in update()
        if self._fused_on(target_logits):
            return _ops.categorical_td_target(target_logits, reward, mask, discount, entropy,
                                              cfg.v_min, cfg.v_max, check_finite=False)
        return brc_math.categorical_td_target(target_logits, reward, mask, discount, entropy,
                                              cfg.v_min, cfg.v_max)

    def _cross_entropy(self, logits: Tensor, target: Tensor) -> Tensor:
        if self._fused_on(logits):
            return _ops.categorical_cross_entropy(logits, target, None, check_finite=False)
        return brc_math.categorical_cross_entropy(logits, target)

    @_in_matmul_precision
    def critic_step(self, batch: Batch, reward: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One AdamW step on the critic CE loss against the projected soft target (§2.2.1, §3.2),
        then the Polyak update of the target critic, tau = 0.005 on every parameter including
        the embedding and LayerNorm (§2.2 step 2; both in one pass over the parameters).

        Returns (loss, expected target value (B,), per-sample finiteness (B,) bool)."""
        with torch.no_grad():
            next_embedding = self.critic.embed(batch.task_id)
            next_action, next_log_prob = self.actor.sample(batch.next_obs, next_embedding)
            with self._autocast():
                target_logits = self._target_fwd(batch.next_obs, next_action, batch.task_id)
            target, q_target = self._td_target(
                brc_math.widen(target_logits), reward, batch.mask, batch.discount, alpha * next_log_prob)
        with self._autocast():
            logits = self._critic_fwd(batch.obs, batch.action, batch.task_id)
        loss = self._cross_entropy(brc_math.widen(logits), target)
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimizer.step_with_polyak(self._target_params, self.config.tau)
        # Per sample: the target value and every member's logit sum finite (one isfinite).
        finite = torch.cat((q_target.unsqueeze(0), logits.detach().sum(-1))).isfinite().all(0)
        return loss.detach(), q_target, finite

    @_in_matmul_precision
    def actor_step(self, batch: Batch, alpha: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One AdamW step on mean(alpha log pi - Q) with the updated critic (§2.2.3).

        The task embedding enters detached (§5.1); critic parameters receive no gradient.
        Returns (loss, entropy estimate -mean log pi (detached), Q mean, per-sample finiteness
        of alpha log pi - Q (B,) bool)."""
        embedding = self.critic.embed(batch.task_id)
        embedding = None if embedding is None else embedding.detach()
        action, log_prob = self.actor.sample(batch.obs, embedding)
        with self._autocast():  # critic parameters detached: dQ/da only, no weight gradients
            logits = self._critic_fwd(batch.obs, action, batch.task_id, param_grads=False,
                                      embedding=embedding)
        q = brc_math.expected_q(logits, self.atoms)
        per_sample = alpha * log_prob - q
        loss = per_sample.mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=self._actor_params)
        self.actor_optimizer.step()
        finite = torch.isfinite(per_sample.detach())
        return loss.detach(), -log_prob.detach().mean(), q.detach().mean(), finite

    def temperature_step(self, entropy: Tensor) -> Tensor:
        """One Adam step on alpha * (H - H_target) w.r.t. log alpha (§2.4)."""
        with torch.no_grad():
            loss = self.log_alpha.exp() * (entropy - self.target_entropy)
            # d loss / d log alpha = exp(log alpha) * (H - H_target) = loss itself: the value
            # autograd computes (the same two factors), without a backward pass for one scalar.
            self.log_alpha.grad = loss.clone()
        # torch's fused Adam step, by its kernels alone (most of a step's time is Python).
        if not fused_kernel_step(self.temperature_optimizer):
            self.temperature_optimizer.step()
        return loss

    def update(self, batch: Batch, denominator: Tensor) -> dict[str, Tensor]:
        """One BRC gradient step (§2.2) on ``batch``; rewards are divided by ``denominator`` (T,)
        of their task (§4.2). Returns detached 0-d metrics plus ``nonfinite_per_task`` (T,): per
        task, the batch's samples with a non-finite critic target/logits (or, when all of those
        are finite, a non-finite actor term)."""
        if denominator.shape != (self.num_tasks,):
            raise ValueError(f"denominator must have shape ({self.num_tasks},), got "
                             f"{tuple(denominator.shape)}")
        self._check_task_ids(batch.task_id)
        alpha = self.alpha
        # 1-2. Critic: categorical soft target (§3.2) and cross-entropy, one AdamW step; then the
        #      Polyak update of the target critic (in the same pass over the parameters).
        reward = batch.reward / denominator[batch.task_id]
        critic_loss, q_target, finite = self.critic_step(batch, reward, alpha)
        # 3. Actor on the just-updated critic, embedding detached, alpha constant.
        actor_loss, entropy, q_mean, actor_finite = self.actor_step(batch, alpha)
        # 4. Temperature from the same actor forward's entropy.
        temperature_loss = self.temperature_step(entropy)
        # Per task, the samples where it went non-finite first (the training loop names their
        # tasks): critic target/logits; if those are all finite, the actor term (e.g. a critic
        # step that overflowed the weights). A NaN critic step makes every actor term NaN, so
        # the actor's samples would name every task of the batch, not the one at fault.
        bad = ~torch.where(finite.all(), actor_finite, finite)
        nonfinite = torch.zeros(self.num_tasks, device=reward.device).index_add_(
            0, batch.task_id, bad.float())
        return {
            "critic_loss": critic_loss, "actor_loss": actor_loss,
            "temperature_loss": temperature_loss, "alpha": alpha, "entropy": entropy,
            "q_target_mean": q_target.mean(), "q_mean": q_mean, "reward_mean": reward.mean(),
            "nonfinite_per_task": nonfinite,
        }

    # ---------------------------------------------------------------- state
    def full_state_dict(self) -> dict:
        """Networks, target, temperature and all optimizer states (for checkpoints)."""
        return {
            "modules": self.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "temperature_optimizer": self.temperature_optimizer.state_dict(),
        }

    def load_full_state_dict(self, state: dict) -> None:
        """Restore :meth:`full_state_dict`. Raises ValueError naming the parameters that differ
        when the checkpoint's networks do not fit this agent (e.g. written by a version whose
        layers were laid out differently), before anything is changed."""
        if not isinstance(state, dict):
            raise ValueError(f"incompatible checkpoint: expected a dict, got "
                             f"{type(state).__name__}")
        lacking = [k for k in ("modules", "critic_optimizer", "actor_optimizer",
                               "temperature_optimizer") if k not in state]
        if lacking:
            raise ValueError(f"incompatible checkpoint: it lacks {', '.join(lacking)}")
        own = self.state_dict()
        theirs = state["modules"]
        missing = sorted(set(own) - set(theirs))
        unexpected = sorted(set(theirs) - set(own))
        reshaped = sorted(k for k in set(own) & set(theirs) if own[k].shape != theirs[k].shape)
        if missing or unexpected or reshaped:
            details = "; ".join(f"{what}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
                                for what, keys in (("missing", missing), ("unexpected", unexpected),
                                                   ("different shape", reshaped)) if keys)
            raise ValueError(f"incompatible checkpoint: its networks do not match this agent "
                             f"({details})")
        self.load_state_dict(theirs)
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.temperature_optimizer.load_state_dict(state["temperature_optimizer"])
