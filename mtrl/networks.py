"""BroNet critic ensemble with a categorical head and task embedding, and the tanh-Gaussian actor
(brc-spec §2.3, §3.1, §5.1, §11.2-3)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtrl.ensemble_norm import ensemble_norm, kernel_applies
from mtrl.fused_bronet import Bf16WeightCache, bronet_forward
from mtrl.math import squash_log_std
from mtrl.tanh_gaussian import sample_tanh_gaussian

LAYER_NORM_EPS = 1e-6  # Flax default (§3.1, §11.2); PyTorch's default is 1e-5.
ORTHOGONAL_GAIN = math.sqrt(2.0)


def _p(param: Tensor, param_grads: bool) -> Tensor:
    return param if param_grads else param.detach()


def critic_forward_flops(d_in: int, width: int, depth: int, atoms: int, members: int) -> int:
    """Matmul FLOPs of one critic forward per sample, all members (§3.1: input layer, 2 per
    residual block, head)."""
    return 2 * members * (d_in * width + 2 * depth * width * width + width * atoms)


class EnsembleLinear(nn.Module):
    """The parameters of E independent Linear layers, applied as one batched matmul by the
    network's forward (EnsembleBroNet): (E, B, in) -> (E, B, out).

    Weights are stored as (E, in, out), so that the product is a single ``bmm`` (§11.13).
    Each member is initialised orthogonally with ``gain`` and zero bias (§3.1, §11.2).
    """

    def __init__(self, ensemble_size: int, in_features: int, out_features: int, gain: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, out_features))
        with torch.no_grad():
            for k in range(ensemble_size):  # init only; the forward has no loop over members
                w = torch.empty(out_features, in_features)
                nn.init.orthogonal_(w, gain=gain)
                self.weight[k].copy_(w.t())


class EnsembleLayerNorm(nn.Module):
    """The learnable scale/shift of a LayerNorm over the last dim, separate per member: (E, 1, W)
    each (applied with the layer's bias by mtrl.ensemble_norm in the network's forward)."""

    def __init__(self, ensemble_size: int, width: int):
        super().__init__()
        self.width = width
        self.weight = nn.Parameter(torch.ones(ensemble_size, 1, width))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, width))


class EnsembleBroBlock(nn.Module):
    """BroNet residual block x + LN(Linear(ReLU(LN(Linear(x))))) (§3.1), for E members at once:
    its layers' parameters (fc1, ln1, fc2, ln2; the network's forward applies them)."""

    def __init__(self, ensemble_size: int, width: int):
        super().__init__()
        self.fc1 = EnsembleLinear(ensemble_size, width, width, ORTHOGONAL_GAIN)
        self.ln1 = EnsembleLayerNorm(ensemble_size, width)
        self.fc2 = EnsembleLinear(ensemble_size, width, width, ORTHOGONAL_GAIN)
        self.ln2 = EnsembleLayerNorm(ensemble_size, width)


class EnsembleBroNet(nn.Module):
    """E independent BroNets (§3.1) as batched matmuls: Linear(D -> W) -> LayerNorm -> ReLU,
    ``depth`` residual blocks, Linear(W -> K) head; x (B, D) -> (E, B, K). The critic (E = 2,
    categorical head) and the actor (E = 1, mean / log-std head) are both this network.

    On CPU float32 in eager mode the whole network is one autograd node (mtrl.fused_bronet, the
    same kernels and gradients); elsewhere it runs layer by layer (:meth:`forward_layers`).
    Subclasses call :meth:`_add_layers` once, after registering any parameters of their own.
    """

    def _add_layers(self, ensemble_size: int, in_features: int, width: int, depth: int,
                    out_features: int) -> None:
        self.fc_in = EnsembleLinear(ensemble_size, in_features, width, ORTHOGONAL_GAIN)
        self.ln_in = EnsembleLayerNorm(ensemble_size, width)
        self.blocks = nn.ModuleList(EnsembleBroBlock(ensemble_size, width) for _ in range(depth))
        self.head = EnsembleLinear(ensemble_size, width, out_features, ORTHOGONAL_GAIN)
        self._bf16_weights = Bf16WeightCache()  # (not state: refilled on every bf16 call)

    def forward_network(self, x: Tensor, *, param_grads: bool = True) -> Tensor:
        """(E, B, K) outputs for the input x (B, D) shared by the members. ``param_grads=False``:
        the parameters enter as constants, so a backward reaches x only.

        Under ``torch.autocast("cpu", torch.bfloat16)`` (AgentConfig.bf16 on CPU) with float32
        parameters this is mtrl.fused_bronet's bf16 path, with autocast's rounding points in the
        trunk and a float32 head (as :meth:`forward_layers`); other CPU autocast dtypes take the
        composed ops."""
        params = self.layer_parameters()
        # Every parameter: one loaded with load_state_dict(assign=True) may be strided.
        if kernel_applies(x, *params):
            if not torch.is_autocast_enabled("cpu"):
                return bronet_forward(x, params, len(self.blocks), LAYER_NORM_EPS, param_grads)
            if torch.get_autocast_dtype("cpu") == torch.bfloat16:
                # Its ops take explicit dtypes; autocast off so that none is cast again.
                with torch.autocast("cpu", enabled=False):
                    return bronet_forward(x, params, len(self.blocks), LAYER_NORM_EPS,
                                          param_grads, bf16=True,
                                          weight_cache=self._bf16_weights)
        return self.forward_layers(x, param_grads=param_grads)

    def forward_layers(self, x: Tensor, *, param_grads: bool = True) -> Tensor:
        """:meth:`forward_network` layer by layer (the composed ops that mtrl.fused_bronet
        computes as one node). Under autocast (AgentConfig.bf16) the head runs outside it, in
        the parameters' dtype: the logits feed the cross-entropy, the TD target and the actor's
        Q, and bf16 logits cost learning (mtrl.fused_bronet's module docstring).

        A loop over :meth:`layer_parameters`, as mtrl.fused_bronet's: per layer one ``bmm`` and
        mtrl.ensemble_norm (bias + LayerNorm + affine + ReLU / residual), the head one
        ``baddbmm`` (a CUDA agent's path: no nn.Module attribute lookups or per-layer wrapper
        calls, ~0.3 ms of Python per update on this CPU)."""
        params = self.layer_parameters()
        if not param_grads:
            params = [p.detach() for p in params]

        def layer(h, weight, bias, gamma, beta, relu=False, residual=None):
            return ensemble_norm(torch.bmm(h, weight), bias, gamma, beta, eps=LAYER_NORM_EPS,
                                 relu=relu, residual=residual)

        members = params[0].shape[0]
        h = layer(x.expand(members, -1, -1) if x.dim() == 2 else x, *params[:4], relu=True)
        for i in range(4, len(params) - 2, 8):  # h + LN(Linear(ReLU(LN(Linear(h)))))
            inner = layer(h, *params[i:i + 4], relu=True)
            h = layer(inner, *params[i + 4:i + 8], residual=h)
        head_weight, head_bias = params[-2:]
        device = h.device.type
        if torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                return torch.baddbmm(head_bias, h.to(head_weight.dtype), head_weight)
        return torch.baddbmm(head_bias, h, head_weight)

    def layer_parameters(self) -> list[nn.Parameter]:
        """Weights and biases of every layer, input to head: fc_in weight/bias, ln_in
        gamma/beta, per block fc1, ln1, fc2, ln2 (weight then bias each), head weight/bias."""
        # Read from the registries directly: nn.Module.__getattr__ would cost ~50 lookups of
        # ~1 us on every forward. Registration order is the order above.
        layers = [self._modules["fc_in"], self._modules["ln_in"]]
        for block in self._modules["blocks"]._modules.values():
            layers.extend(block._modules.values())
        layers.append(self._modules["head"])
        return [p for layer in layers for p in layer._parameters.values()]


class Critic(EnsembleBroNet):
    """Ensemble of BroNet critics with a ``num_atoms``-logit categorical head (§3.1) and, for
    ``num_tasks > 1``, the unit-norm task embedding table that it owns (§5.1).

    forward(obs (B, O), action (B, A), task_id (B,)) -> logits (E, B, num_atoms).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        num_tasks: int,
        *,
        width: int = 4096,
        depth: int = 2,
        num_atoms: int = 101,
        ensemble_size: int = 2,
        embedding_dim: int = 32,
    ):
        super().__init__()
        self.num_tasks = num_tasks
        self.embedding_dim = embedding_dim if num_tasks > 1 else 0
        if num_tasks > 1:
            # §5.1/§11.3: Normal(0, variance 1/embedding_dim); normalised on every forward.
            table = torch.randn(num_tasks, embedding_dim) / math.sqrt(embedding_dim)
            self.task_embedding = nn.Parameter(table)
        else:
            self.register_parameter("task_embedding", None)  # single-task: no embedding (§5.1)
        in_features = obs_dim + action_dim + self.embedding_dim
        self._add_layers(ensemble_size, in_features, width, depth, num_atoms)

    def embed(self, task_id: Tensor) -> Tensor | None:
        """Unit-norm task embeddings (B, embedding_dim) (no learnable scale, no epsilon; §5.1)."""
        if self.task_embedding is None:
            return None
        e = self.task_embedding[task_id]
        # (Tensor.norm's Python wrapper ends in this call)
        return e / torch.linalg.vector_norm(e, dim=-1, keepdim=True)

    def forward(self, obs: Tensor, action: Tensor, task_id: Tensor, *,
                param_grads: bool = True, embedding: Tensor | None = None) -> Tensor:
        """Logits (E, B, num_atoms). ``param_grads=False``: every parameter (embedding included)
        enters detached, so a backward reaches only the inputs (the actor loss, §2.2 step 3)
        and builds no weight-gradient graph. ``embedding``: ``self.embed(task_id)`` when the
        caller has it already (the actor step, with param_grads=False), else computed here."""
        parts = [obs, action]
        emb = self.embed(task_id) if embedding is None else embedding
        if emb is not None:
            parts.append(_p(emb, param_grads).to(obs.dtype))
        return self.forward_network(torch.cat(parts, dim=-1), param_grads=param_grads)

    def trunk_parameters(self) -> list[nn.Parameter]:
        """All parameters except the task embedding table."""
        return [p for n, p in self.named_parameters() if n != "task_embedding"]


class Actor(EnsembleBroNet):
    """BroNet (width 256, 1 block) tanh-Gaussian policy (§2.3): the trunk of the critic with one
    member, and one head whose first |A| outputs are the mean and last |A| the raw log-std
    (initialised as two orthogonal heads, gain sqrt(2) and 1.0).

    Input: padded observation (B, O) and, in multi-task mode, the critic's task embedding
    (B, embedding_dim), which the caller passes detached (§5.1).
    """

    def __init__(
        self, obs_dim: int, action_dim: int, embedding_dim: int = 0, *, width: int = 256,
        depth: int = 1,
    ):
        super().__init__()
        self.action_dim = action_dim
        self._add_layers(1, obs_dim + embedding_dim, width, depth, 2 * action_dim)
        with torch.no_grad():  # §2.3: mean head gain sqrt(2), log-std head gain 1.0
            for first, gain in ((0, ORTHOGONAL_GAIN), (action_dim, 1.0)):
                w = torch.empty(action_dim, width)
                nn.init.orthogonal_(w, gain=gain)
                self.head.weight[0, :, first:first + action_dim].copy_(w.t())

    def forward(self, obs: Tensor, embedding: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Returns the pre-tanh mean and log sigma, each (B, A)."""
        x = obs if embedding is None else torch.cat([obs, embedding], dim=-1)
        mean, raw_log_std = self.forward_network(x).squeeze(0).split(self.action_dim, dim=-1)
        return mean, squash_log_std(raw_log_std)

    def sample(
        self, obs: Tensor, embedding: Tensor | None = None, std_scale: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """Reparameterised action a = tanh(mean + std_scale * sigma * eps) (B, A) and log pi(a) (B,)
        (mtrl.tanh_gaussian: one autograd node on the CPU)."""
        x = obs if embedding is None else torch.cat([obs, embedding], dim=-1)
        # (the one member; squeeze's backward is a view, indexing's a zero-filled copy)
        return sample_tanh_gaussian(self.forward_network(x).squeeze(0), self.action_dim,
                                    std_scale)

    def act(self, obs: Tensor, embedding: Tensor | None = None, deterministic: bool = False) -> Tensor:
        """Environment action (B, A) in [-1, 1]: tanh(mean) when deterministic (§2.3, §6.2)."""
        mean, log_std = self(obs, embedding)
        if deterministic:
            return torch.tanh(mean)
        pre_tanh = mean + torch.exp(log_std) * torch.randn_like(mean)
        return torch.tanh(pre_tanh).clamp(-1.0, 1.0)
