"""The central invariant and the save/load round trip for EVERY registered model, driven by the registry.

Every test here is parametrized over ``sorted(MODELS)`` (``zoo.models``) and builds its model with
``tests/tiny_models.py``'s :func:`tiny`, so a model added to ``MODEL_MODULES`` is checked with no list to edit (the
guard below fails until it has a tiny config in ``TINY``). The per-model test files check more, at larger sizes; this
file is what a contributor's new model meets first:

* full forward == prefix forward followed by ``step`` calls: :func:`equivalence.check_step_equivalence` for a model
  with ``has_exact_step`` (every position of every history; one row alone with no padding, and mixed lengths padded
  on the model's ``padding_side``, rows also stepped together in one batched state), otherwise
  :func:`equivalence.check_window_step_equivalence` (each step equals a forward over its own last
  ``max_seq_length`` items; histories below, at and beyond the window, then batched). Both in one-item steps and in
  random chunks, on random histories (with timestamps for a time-aware model), to :data:`ATOL`; both checkers also
  assert that the history moves the last logits by more than ``10 * ATOL``, so that a lost state cannot pass;
* ``step`` primed in two chunks equals one prime over the same items (the logits after every item, and the state);
* ``save_pretrained`` / ``from_pretrained`` (the model's class and ``AutoModel``) give back the same config, the same
  tensors and the same logits, bit for bit.
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModel

from equivalence import _timestamps, check_step_equivalence, check_window_step_equivalence
from tiny_models import TINY, tiny
from zoo.models import MODELS

pytestmark = pytest.mark.usefixtures("one_thread")

#: max abs difference allowed between a step's logits and the forward's: tiny float32 models agree to ~1e-7, so
#: 1e-5 leaves a wide margin for rounding while a halved or dropped state (differences of 1e-3..1e-1) fails
ATOL = 1e-5

NAMES = sorted(MODELS)


def test_every_registered_model_has_a_tiny_config():
    """A model in ``MODELS`` without a ``TINY`` entry would not be built by the tests below (and a stale entry
    names a model that no longer exists)."""
    assert set(TINY) == set(MODELS), (f"tests/tiny_models.py TINY lacks {sorted(set(MODELS) - set(TINY))} and has "
                                      f"{sorted(set(TINY) - set(MODELS))} that zoo.models does not register")


def _lengths(model, padded: bool) -> list[int]:
    """History lengths for the central invariant: one row of over ``max_seq_length`` items (no padding) or rows of
    mixed lengths padded together; within the window for a model with a fixed one. A window model gets histories
    below, at and beyond its window (the window check needs at least two fill levels)."""
    M = int(model.config.max_seq_length)
    if not model.has_exact_step:
        return [2, M, 2 * M + 1] if padded else [1, M + 1]
    cap = M if getattr(model, "fixed_window", False) else 2 * M
    return [1, cap // 2, cap - 1] if padded else [cap]


@pytest.mark.parametrize("plan", ["ones", "mixed"])
@pytest.mark.parametrize("padded", [False, True], ids=["one-row", "mixed-lengths"])
@pytest.mark.parametrize("name", NAMES)
def test_step_equals_the_full_forward(name, padded, plan):
    """The central invariant through the project's own checkers (see the module docstring), to ``ATOL``."""
    model = tiny(name)
    lengths = _lengths(model, padded)
    # histories other than the per-model tests' (seed 0); with these seeds the "mixed" plan cuts the longest history
    # of every exact-step model into 2..5 chunks (a seed that drew one chunk of 16 would test no carried state)
    seed = 16 if padded else 15
    if model.has_exact_step:
        worst = check_step_equivalence(model, lengths, chunk_plan=plan, atol=ATOL, seed=seed,
                                       timestamps=model.uses_timestamps)
    else:
        worst = check_window_step_equivalence(model, lengths, chunk_plan=plan, atol=ATOL, seed=seed,
                                              timestamps=model.uses_timestamps)
    print(f"{name} ({'exact step' if model.has_exact_step else 'window step'}) lengths {lengths}, plan {plan}: "
          f"max abs diff {worst:.3g} (atol {ATOL})")
    assert worst <= ATOL


def _histories(model, n_rows: int, n: int, seed: int):
    """``[n_rows, n]`` random real item ids and, for a time-aware model, their float64 timestamps (else None)."""
    rng = random.Random(seed)
    V = int(model.config.n_items)
    ids = torch.tensor([[rng.randrange(1, V) for _ in range(n)] for _ in range(n_rows)])
    ts = (torch.tensor([_timestamps(rng, n) for _ in range(n_rows)], dtype=torch.float64) if model.uses_timestamps
          else None)
    return ids, ts


@pytest.mark.parametrize("name", NAMES)
def test_priming_in_two_chunks_equals_one_prime(name):
    """``step`` over ``ids[:, :k]`` and then ``ids[:, k:]`` from the state it returned gives the logits after every
    item (``all_positions``) and the final state that one ``step`` over all of ``ids`` gives, for two rows of
    different items and several cut points ``k``: the state carried between calls is the state the model ends a
    chunk with (a halved, reset or reordered state differs). For a window model the state is its window."""
    model = tiny(name)
    n = int(model.config.max_seq_length) + 3
    ids, ts = _histories(model, 2, n, seed=21)
    with torch.no_grad():
        once, once_state = model.step(ids, model.init_state(2), timestamps=ts, all_positions=True)   # [2, n, V]
        for k in (1, n // 2, n - 1):
            first, state = model.step(ids[:, :k], model.init_state(2), timestamps=None if ts is None else ts[:, :k],
                                      all_positions=True)
            second, state = model.step(ids[:, k:], state, timestamps=None if ts is None else ts[:, k:],
                                       all_positions=True)
            diff = (torch.cat([first, second], 1) - once).abs().max().item()
            assert diff <= ATOL, f"{name}: primed with {k} + {n - k} items vs {n} at once: logits differ by {diff:.3g}"
            assert set(state) == set(once_state), (sorted(state), sorted(once_state))
            for key, want in once_state.items():
                got = state[key]
                assert got.shape == want.shape and got.dtype == want.dtype, (key, got.shape, want.shape)
                if want.is_floating_point():
                    d = (got.double() - want.double()).abs().max().item()
                    assert d <= ATOL, (f"{name}: state {key!r} after {k} + {n - k} items vs {n} at once differs "
                                       f"by {d:.3g}")
                else:
                    assert torch.equal(got, want), f"{name}: state {key!r} after {k} + {n - k} items vs {n} at once"


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_round_trip_is_exact(name, tmp_path):
    """Every weight moved off its init (so that a tensor the loader leaves at a fresh init cannot pass), saved, then
    loaded by the model's class and by ``AutoModel``: the same class and config (but ``_name_or_path``, now the
    folder), every tensor of the state dict equal bit for bit, eval mode, and the same forward logits on a padded
    batch and the same step logits."""
    model = tiny(name)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    model.save_pretrained(tmp_path / "saved")
    lengths = [int(model.config.max_seq_length), 2]
    rng = random.Random(31)
    hist = [[rng.randrange(1, int(model.config.n_items)) for _ in range(n)] for n in lengths]
    if model.uses_timestamps:
        ids, mask, ts = model.pad_batch(hist, timestamps=[_timestamps(rng, n) for n in lengths])
    else:
        (ids, mask), ts = model.pad_batch(hist), None
    step_ids, step_ts = _histories(model, 2, 4, seed=32)
    with torch.no_grad():
        want = model(ids, mask, timestamps=ts).logits
        want_step, _ = model.step(step_ids, model.init_state(2), timestamps=step_ts, all_positions=True)
    for load in (MODELS[name][1].from_pretrained, AutoModel.from_pretrained):
        loaded = load(tmp_path / "saved")
        assert type(loaded) is type(model) and not loaded.training
        got_cfg, want_cfg = loaded.config.to_dict(), model.config.to_dict()
        assert got_cfg.pop("_name_or_path") == str(tmp_path / "saved")         # where it was loaded from
        want_cfg.pop("_name_or_path", None)
        assert got_cfg == want_cfg
        sd, got_sd = model.state_dict(), loaded.state_dict()
        assert sorted(got_sd) == sorted(sd)
        for key, t in sd.items():
            assert got_sd[key].dtype == t.dtype and torch.equal(got_sd[key], t), f"{name}: {key} changed on reload"
        with torch.no_grad():
            assert torch.equal(loaded(ids, mask, timestamps=ts).logits, want)
            got_step, _ = loaded.step(step_ids, loaded.init_state(2), timestamps=step_ts, all_positions=True)
            assert torch.equal(got_step, want_step)


# ------------------------------------------------------------------ zoo.recommend --stepwise (the README's command)
def test_stepwise_plan_primes_a_prefix_then_steps_one_item_at_a_time():
    from zoo.recommend import STEPWISE_SINGLE_STEPS, stepwise_plan

    assert stepwise_plan(1) == (0, 1) and stepwise_plan(2) == (1, 1)
    for n in range(2, 300):
        primed, singles = stepwise_plan(n)
        assert primed + singles == n and primed >= 1 and singles == min(STEPWISE_SINGLE_STEPS, n - 1) >= 1


def _halve_the_carried_state(real):
    """``step`` that halves the recurrent states it is given (the float tensors that ``init_state`` makes zero; a
    bookmark such as TiM4Rec-causal's ``last_ts = -1`` is kept): a model whose step loses part of its state between
    calls. A zero state stays zero, so a step primed once from ``init_state`` shows nothing."""
    def step(self, item_ids, state, *a, **kw):
        zero = self.init_state(item_ids.shape[0])
        state = {k: v * 0.5 if v.is_floating_point() and not zero[k].any() else v for k, v in state.items()}
        return real(self, item_ids, state, *a, **kw)
    return step


@pytest.mark.parametrize("name", NAMES)
def test_recommend_stepwise_steps_one_item_at_a_time_and_reports_a_broken_state_carry(name, tmp_path, monkeypatch,
                                                                                     capsys):
    """``zoo.recommend --stepwise`` on each exact-step model of the registry: one ``step`` over the window's prefix,
    then one ``step`` per item (at least one), same top-k as the forward to ``ATOL``; the same model with a step that
    halves the state it carries between calls is reported (another top-k or a score difference above ``ATOL``; it
    primed the whole history in one call from a zero state before, which reported no difference). A window model is
    refused in one line."""
    from zoo.recommend import main, stepwise_plan
    from zoo.vocab import ItemVocab

    model = tiny(name)
    V, M = int(model.config.n_items), int(model.config.max_seq_length)
    ext = [100 + 7 * i for i in range(V - 1)]
    model.set_item_vocab(ItemVocab(ext))
    model.save_pretrained(tmp_path / name)
    rng = random.Random(41)
    history = [rng.choice(ext) for _ in range(M + 2)]                   # longer than the window: the last M are read
    argv = ["--model", str(tmp_path / name), "--history", *map(str, history), "--k", "5", "--stepwise"]
    if model.uses_timestamps:
        argv += ["--timestamps", *map(str, _timestamps(rng, len(history)))]
    if not model.has_exact_step:                        # a usage error (2), refused once the model is loaded
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and f"--stepwise: {name} has no exact recurrent step" in capsys.readouterr().err
        return
    cls = type(model)
    real = cls.step
    calls = []

    def counted(self, item_ids, *a, **kw):
        calls.append(int(item_ids.shape[1]))
        return real(self, item_ids, *a, **kw)

    monkeypatch.setattr(cls, "step", counted)
    exact = main(argv)
    primed, singles = stepwise_plan(M)
    assert calls == [primed] + [1] * singles and singles >= 1 and primed >= 1
    assert exact["stepwise_items"] == exact["items"] and exact["stepwise_max_abs_diff"] <= ATOL
    text = capsys.readouterr().out
    assert (f"stepwise (init_state, one step over the first {primed} items, then {singles} one-item step"
            in text), text
    monkeypatch.setattr(cls, "step", _halve_the_carried_state(real))
    broken = main(argv + ["--json"])
    print(f"{name}: --stepwise max |score diff| {exact['stepwise_max_abs_diff']:.3g} exact, "
          f"{broken['stepwise_max_abs_diff']:.3g} with a halved state carry")
    assert broken["stepwise_items"] != broken["items"] or broken["stepwise_max_abs_diff"] > ATOL, broken
