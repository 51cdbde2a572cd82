"""baselines.py: Coconut's curriculum schedule and layout by hand, its multi-pass forward through one KV cache against a
naive loop that re-runs the whole sequence for every thought (values and gradients), and its inference against the
same naive loop, one question at a time.

Run: .venv/bin/python -m pytest tests/test_baselines.py
"""
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_gpt

from baselines import coconut_stage, thought_forward, thought_layout
from colar import prompt
from sample import answer_with_thoughts
from tokenizer import Tokenizer

TOK = Tokenizer("char")
EXAMPLES = [("1+2*3", ["1+2=3", "3*3=9"], "9"), ("12-5", ["12-5=7"], "7"), ("2*2+1", ["2*2=4", "4+1=5"], "5")]


def test_coconut_stage_by_hand():
    """Stages 1..3 of 10 steps each, then stage 4 (every step gone) to the end, as Coconut's stage after its
    max_latent_stage."""
    assert [coconut_stage(s, 10, 3) for s in (0, 9, 10, 19, 20, 29, 30, 99)] == [1, 1, 2, 2, 3, 3, 4, 4]


def test_thought_layout_by_hand():
    b = thought_layout(TOK, EXAMPLES, stage=1, c_thought=2, stages=3)
    # prompts: "1+2*3" + speed, 1, bot = 8 ids; "12-5" 7 ids (one column of left padding); "2*2+1" 8 ids
    assert b.start == 8
    row1 = b.idx[1][b.mask[1]].tolist()
    assert row1[:7] == prompt(TOK, "12-5", 1) and not b.mask[1, 0]
    # row 1 has one step: all of it becomes 2 thoughts, then <|eot|> (forced, not learned), the answer, <|eos|>
    assert b.thought[1].nonzero().squeeze(1).tolist() == [8, 9]
    assert row1[7:] == [TOK.pad, TOK.pad, TOK.eot] + TOK.encode(" 7")  # <|eos|> is only predicted
    t1 = b.targets[1].tolist()
    assert t1[:6] == [-1] * 6 and t1[6] == TOK.bot  # the speed digit predicts <|bot|>
    assert t1[7:10] == [-1, -1, -1]  # <|bot|> and thought 1 predict thoughts; thought 2 the forced <|eot|>
    assert t1[10:13] == TOK.encode(" 7") + [TOK.eos] and set(t1[13:]) <= {-1}
    # row 0 keeps its second step as text, learned from the last thought on
    rest = TOK.encode("<<3*3=9>>")
    assert b.idx[0, 10:10 + len(rest)].tolist() == rest and b.targets[0, 9] == rest[0]
    assert (b.pos[0, :b.mask[0].sum()] == torch.arange(int(b.mask[0].sum()))).all()
    # after the last stage: every step gone, stages x c_thought = 6 thoughts in every row, then the forced <|eot|>
    b4 = thought_layout(TOK, EXAMPLES, stage=4, c_thought=2, stages=3)
    assert b4.thought.sum(1).tolist() == [6, 6, 6] and (b4.idx == TOK.eot).sum(1).tolist() == [1, 1, 1]
    assert [(t >= 0).sum().item() for t in b4.targets] == [1 + 2 + 1] * 3  # <|bot|>, the answer, <|eos|>
    # stage k gives k x c_thought thoughts also to a chain of fewer steps (Coconut pads them): 4 for 1 step at
    # stage 2; a chain of more steps than the last stage keeps the rest as text until the stage after it
    four = [("1+1+1+1+1", ["1+1=2", "2+1=3", "3+1=4", "4+1=5"], "5")]
    assert thought_layout(TOK, EXAMPLES, stage=2, c_thought=2, stages=3).thought.sum(1).tolist() == [4, 4, 4]
    b3 = thought_layout(TOK, four, stage=3, c_thought=2, stages=3)
    rest = TOK.encode("<<4+1=5>>")
    assert b3.thought.sum().item() == 6 and b3.idx[0, b3.start + 6:b3.start + 6 + len(rest)].tolist() == rest
    b4 = thought_layout(TOK, four, stage=4, c_thought=2, stages=3)
    assert b4.thought.sum().item() == 6 and b4.idx[0, b4.start + 6].item() == TOK.eot
    # stage 0 is CoT: no thoughts, every chain token learned
    b0 = thought_layout(TOK, EXAMPLES, stage=0, c_thought=2, stages=3)
    assert not b0.thought.any() and (b0.targets >= 0).sum(1).tolist() == [
        1 + len(TOK.encode("<<1+2=3>> <<3*3=9>>")) + 1 + 2 + 1, 1 + len(TOK.encode("<<12-5=7>>")) + 1 + 2 + 1,
        1 + len(TOK.encode("<<2*2=4>> <<4+1=5>>")) + 1 + 2 + 1]


def naive_forward(model, b, think=lambda h: h):
    """The whole sequence re-run for every thought column, no cache: each thought is the final hidden state at the
    column before it, from a pass that already holds the earlier thoughts."""
    x = model.wte(b.idx)
    for col in range(b.start, b.idx.size(1)):
        if b.thought[:, col].any():
            h = model(embeds=x, pos=b.pos, mask=b.mask)[2]
            x = torch.where(b.thought[:, col, None, None] & (torch.arange(x.size(1)) == col)[None, :, None],
                            think(h[:, col - 1])[:, None], x)
    return model(embeds=x, pos=b.pos, mask=b.mask)[0]


def test_thought_forward_matches_a_naive_loop_values_and_gradients():
    model = tiny_gpt(TOK.n_vocab, 64, n_layer=2, n_embd=16, init="sharp").double().train()
    four = ("1+1+1+1+1", ["1+1=2", "2+1=3", "3+1=4", "4+1=5"], "5")  # keeps two steps as text at stage 2
    b = thought_layout(TOK, EXAMPLES + [four], stage=2, c_thought=2, stages=3)
    real = b.mask
    grads = []
    for forward in (thought_forward, naive_forward):
        model.zero_grad()
        logits = forward(model, b)
        grads.append(logits)
        F.cross_entropy(logits.flatten(0, 1), b.targets.flatten(), ignore_index=-1).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(grads[0][real], grads[2][real], atol=1e-9, rtol=1e-9)
    for g_cached, g_naive in zip(grads[1], grads[3]):
        torch.testing.assert_close(g_cached, g_naive, atol=1e-9, rtol=1e-9)
    assert b.thought.sum(1).tolist() == [4, 4, 4, 4] and b.mask.sum(1).tolist()[3] > b.mask.sum(1).tolist()[0] + 10


def naive_answer(model, tok, question, n_thoughts, max_tokens):
    xs = [model.wte.weight[i] for i in prompt(tok, question, 1)]
    with torch.no_grad():
        for _ in range(n_thoughts):
            xs.append(model(embeds=torch.stack(xs)[None])[2][0, -1])
        xs.append(model.wte.weight[tok.eot])
        out = []
        for _ in range(max_tokens):
            nxt = int(model(embeds=torch.stack(xs)[None])[0][0, -1].argmax())
            if nxt == tok.eos:
                break
            out.append(nxt)
            xs.append(model.wte.weight[nxt])
    return tok.decode(out).strip()


def test_answer_with_thoughts_matches_a_naive_loop():
    model = tiny_gpt(TOK.n_vocab, 64, n_layer=2, n_embd=16, init="sharp", seed=1).double()
    questions = [q for q, _, _ in EXAMPLES]
    got = answer_with_thoughts(model, TOK, questions, n_thoughts=3, max_answer_tokens=6)
    want = [naive_answer(model, TOK, q, 3, 6) for q in questions]
    assert [r["answer"] for r in got] == want and len(set(want)) > 1  # padded rows answer as if alone
    assert all(r["length"] == 3 for r in got)


def test_answer_with_thoughts_uses_the_whole_context():
    """Thoughts that leave 4 positions after <|eot|>: 4 answer tokens fit (the last is never fed), as in the naive
    loop; a prompt whose thoughts and <|eot|> fill the context is refused in one line."""
    from common import UserError
    from sample import answer_questions
    model = tiny_gpt(TOK.n_vocab, 32, n_layer=2, n_embd=16, init="sharp", seed=1).double()
    q = EXAMPLES[0][0]
    n_thoughts = 32 - len(prompt(TOK, q, 1)) - 4
    want = naive_answer(model, TOK, q, n_thoughts, 4)
    assert answer_with_thoughts(model, TOK, [q], n_thoughts, max_answer_tokens=32)[0]["answer"] == want
    assert len(want) == 4  # (this model never closes its answer: it fills the room)
    for c in (1, 0):  # evaluate.py asks at c = 0 (a baseline has no speed): its <|eot|> was counted twice there
        with pytest.raises(UserError, match=re.escape("with its 24 thoughts and <|eot|>: 33")):
            answer_questions(model, TOK, [q], c=c, thoughts=n_thoughts + 4)
        assert len(answer_questions(model, TOK, [q], c=c, thoughts=n_thoughts + 2)[0]["answer"]) == 2


# --- training and evaluation through the CLIs' main functions -----------------------------------------------------
def test_coconut_and_pause_train_with_a_curriculum_and_evaluate(tiny_runs, tmp_path):
    import evaluate
    import sample
    import train_sft
    from checkpoint import load_checkpoint
    from common import UserError
    from conftest import tiny_train_cfg
    from baselines import PauseThought, Projector
    from data.format import read_split
    from sample import load_model
    for mode in ("coconut", "pause", "distill"):
        out = str(tmp_path / mode)
        run = train_sft.main(tiny_train_cfg(tiny_runs["data"], out, mode=mode, init_from=tiny_runs["cot"],
                                            max_steps=5, stages=2, stage_steps=2, c_thought=1, eval_every=5))
        ckpt = load_checkpoint(out, "latest")
        steps = {int(s["step"]) for s in ckpt["optimizer"]["state"].values()}
        if mode == "distill":  # no curriculum: the layout after the last stage throughout, one optimizer
            assert [c for _, c, _, _ in run["history"]] == [3] * 5 and steps == {5}
        else:  # stages 1 and 2 for 2 steps each, then every step gone; the optimizer reset when that began (step 4)
            assert [c for _, c, _, _ in run["history"]] == [1, 1, 2, 2, 3] and steps == {1}
        model, head, tok, _ = load_model(out)
        assert (head is None) == (mode == "coconut")
        if mode != "coconut":  # the thought module comes back with the model
            assert isinstance(head, PauseThought if mode == "pause" else Projector)
            for a, b in zip(head.parameters(), run["head"].parameters()):
                assert torch.equal(a, b)
        records = evaluate.main(evaluate.EvalConfig(ckpt=out, split="val", decode="greedy,sampled", seeds="0,1",
                                                    device="cpu"))
        assert [(r["method"], r["c"], r["decode"]) for r in records] == [(mode, 0, "greedy"), (mode, 0, "sampled")]
        assert all(r["mean_len"] == 2 for r in records)  # stages x c_thought thoughts
        # sample.py answers with the same thoughts (it decoded a text chain, or crashed on the thought module)
        q = read_split(f"{tiny_runs['data']}/val.txt")[0][0]
        got = sample.main(sample.SampleConfig(ckpt=out, question=q, device="cpu"))
        want = answer_with_thoughts(model, tok, [q], 2, head or (lambda h: h), max_answer_tokens=model.cfg.block_size)
        assert got[0]["length"] == 2 and got[0]["answer"] == want[0]["answer"]
        with pytest.raises(UserError, match="always thinks 2 thoughts"):
            sample.main(sample.SampleConfig(ckpt=out, question=q, c=1, device="cpu"))


def test_a_coconut_run_resumed_to_go_further_keeps_its_stages(tiny_runs, tmp_path):
    """Stages derived from --max_steps (stage_steps 0) are the run's: resumed with a larger --max_steps it goes on
    in its last phase, never back a stage (6 // 5 = 1 step per stage; 12 // 5 = 2 would put step 3 in stage 2)."""
    import train_sft
    from conftest import tiny_train_cfg
    out = str(tmp_path / "coconut")
    flags = dict(mode="coconut", init_from=tiny_runs["cot"], stages=3, c_thought=1, eval_every=3)
    first = train_sft.main(tiny_train_cfg(tiny_runs["data"], out, max_steps=6, stop_at=3, **flags))
    assert [c for _, c, _, _ in first["history"]] == [1, 2, 3]
    further = train_sft.main(tiny_train_cfg(tiny_runs["data"], out, max_steps=12, resume=True, **flags))
    assert [c for _, c, _, _ in further["history"]] == [4] * 9


# --- iCoT ----------------------------------------------------------------------------------------------------------
def test_icot_schedule_and_shortening_by_hand():
    from baselines import icot_removed, shorten_chains
    assert [icot_removed(s, 3) for s in (0, 2, 3, 5, 6, 9)] == [0, 0, 1, 1, 2, 3]
    encoded = [([1], [10, 11, 12, 13], [2]), ([3], [20, 21], [4])]
    assert shorten_chains(encoded, 1, [0, 2]) == [([1], [11, 12, 13], [2]), ([3], [], [4])]
    assert shorten_chains(encoded, 3, [0, 0]) == [([1], [13], [2]), ([3], [], [4])]  # never fewer than none


def test_removal_offsets_follow_the_truncated_exponential():
    from baselines import removal_offsets
    assert removal_offsets(5, 0.0).tolist() == [0] * 5  # smoothing off
    o = removal_offsets(40000, 1.0, torch.Generator().manual_seed(0))
    # P(o) = (1 - e^-1) e^-o: 0.632, 0.233, 0.086 for o = 0, 1, 2 (binomial sd ~0.0024 at 40,000 draws)
    for k, p in ((0, 0.6321), (1, 0.2325), (2, 0.0855)):
        assert abs((o == k).float().mean().item() - p) < 0.012
    assert removal_offsets(1000, 4.0, torch.Generator().manual_seed(0)).max() <= 3  # P(o >= 4) ~ 1e-7


def test_icot_trains_until_the_chain_is_gone_and_selects_only_then(tiny_runs, tmp_path):
    import colar
    import evaluate
    import train_sft
    from checkpoint import load_checkpoint
    from conftest import tiny_train_cfg
    from data.format import read_split
    train = read_split(f"{tiny_runs['data']}/train.txt")
    longest = max(len(TOK.encode(colar.example_texts(*ex, "cot")[1])) for ex in train)
    out = str(tmp_path / "icot")
    run = train_sft.main(tiny_train_cfg(tiny_runs["data"], out, mode="icot", init_from=tiny_runs["cot"],
                                        max_steps=longest + 6, remove_every=1, removal_lambda=0.0, eval_every=3))
    ckpt = load_checkpoint(out, "latest")
    # one removed token per step, the optimizer reset at each until the schedule passed the longest chain
    assert {int(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {6}
    best = load_checkpoint(out, "best")
    assert best["step"] - 1 >= longest  # no checkpoint with chains left was selected
    records = evaluate.main(evaluate.EvalConfig(ckpt=out, split="val", decode="greedy", device="cpu"))
    assert [(r["method"], r["c"]) for r in records] == [("icot", 1)]
    assert run["best_val"] == best["best_val"]


def test_icot_stopped_early_is_not_a_finished_schedule(tiny_runs, tmp_path, capsys):
    """--stop_at before the chains are gone pauses the run: no checkpoint becomes `best` and nothing says to raise
    --max_steps; a schedule that ends with chains left does take its last checkpoint as `best`, and says so."""
    import train_sft
    from checkpoint import read_pointer
    from conftest import tiny_train_cfg
    flags = dict(mode="icot", init_from=tiny_runs["cot"], remove_every=100, eval_every=3)
    paused = str(tmp_path / "paused")
    train_sft.main(tiny_train_cfg(tiny_runs["data"], paused, max_steps=400, stop_at=3, **flags))
    assert read_pointer(paused, "latest") == "ckpt_000003.pt" and read_pointer(paused, "best") is None
    assert "raise --max_steps" not in capsys.readouterr().out
    ended = str(tmp_path / "ended")
    train_sft.main(tiny_train_cfg(tiny_runs["data"], ended, max_steps=3, **flags))
    out = capsys.readouterr().out
    assert read_pointer(ended, "best") == "ckpt_000003.pt" and "raise --max_steps" in out
    assert "best val accuracy none (chains not all removed)" in out  # (it printed -100.0%)


# --- Distill (CODI) -------------------------------------------------------------------------------------------------
def test_hidden_distance_by_hand():
    from baselines import hidden_distance
    student, teacher = [torch.tensor([[0.0, 0.0]])], [torch.tensor([[0.5, 3.0]])]
    # smooth-L1 per entry: 0.5 x 0.5^2 = 0.125 (|d| < 1) and 3 - 0.5 = 2.5; mean 1.3125; std(0.5, 3) = 1.76777
    assert abs(hidden_distance(student, teacher).item() - 1.3125 / 1.767767) < 1e-5
    two = hidden_distance(student * 2, teacher + [torch.tensor([[2.0, 2.5]])])
    # second block: entries 2 and 2.5 -> 1.5 and 2.0, mean 1.75, std 0.353553 -> 4.9497; the mean of both blocks
    assert abs(two.item() - (1.3125 / 1.767767 + 1.75 / 0.353553) / 2) < 1e-4


def block_output_reference(model, embeds, k):
    """The output of block k by the model's public forward with the blocks after k and the final LayerNorm taken out
    for the call (the same parameters, so gradients reach them)."""
    blocks, ln_f = model.blocks, model.ln_f
    model.blocks, model.ln_f = blocks[:k + 1], torch.nn.Identity()
    try:
        return model(embeds=embeds)[2]
    finally:
        model.blocks, model.ln_f = blocks, ln_f


def test_distill_loss_against_a_reference_built_from_public_forwards():
    import colar
    from baselines import DistillBatch, Projector, answer_leads, distill_loss, hidden_distance
    torch.manual_seed(0)
    model = tiny_gpt(TOK.n_vocab, 64, n_layer=2, n_embd=16, init="sharp").double().train()
    proj = Projector(16).double()
    encoded = colar.encode(TOK, EXAMPLES, "cot")
    b = DistillBatch(colar.layout(TOK, encoded, 1), thought_layout(TOK, EXAMPLES, 4, 1, 3), answer_leads(TOK, EXAMPLES))
    assert b.lead.tolist() == [1, 1, 1]  # " 9": the space, then the answer's value
    loss, _, stats = distill_loss(model, proj, b, weight=5.0)
    grads = torch.autograd.grad(loss, list(model.parameters()) + list(proj.parameters()))

    # the reference: each example alone and unpadded; teacher states as constants; student thoughts by re-running
    ce_s, teacher, student = [], [[], []], [[], []]
    for q, steps, a in EXAMPLES:
        row = prompt(TOK, q, 1) + TOK.encode(colar.example_texts(q, steps, a, "cot")[1])
        e_t = model.wte(torch.tensor(row + [TOK.eot] + TOK.encode(" " + a)))[None]
        want = TOK.encode(" " + a) + [TOK.eos]
        xs = [model.wte.weight[i] for i in prompt(TOK, q, 1)]
        for _ in range(3):
            xs.append(proj(model(embeds=torch.stack(xs)[None])[2][0, -1]))
        xs += [model.wte.weight[i] for i in [TOK.eot] + TOK.encode(" " + a)]
        e_s = torch.stack(xs)[None]
        s_logits = model(embeds=e_s)[0][0]
        P = len(prompt(TOK, q, 1))
        ce_s.append(F.cross_entropy(s_logits[P + 3:], torch.tensor(want), reduction="sum"))  # answer and <|eos|>
        ce_s[-1] = ce_s[-1] + F.cross_entropy(s_logits[P - 2:P - 1], torch.tensor([TOK.bot]), reduction="sum")
        for k in range(2):
            with torch.no_grad():
                teacher[k].append(block_output_reference(model, e_t, k)[0, len(row) + 1])  # at the space after <|eot|>
            student[k].append(block_output_reference(model, e_s, k)[0, P + 3 + 1])  # (which predicts the value)
    n_student = sum(len(TOK.encode(" " + a)) + 2 for _, _, a in EXAMPLES)  # <|bot|>, the answer, <|eos|>
    ref_student = sum(ce_s) / n_student
    ref_dist = hidden_distance([torch.stack(s) for s in student], [torch.stack(t) for t in teacher])
    # (the CE is taken in float32, as in training: agreement to float32 rounding)
    assert abs(stats["student"] - ref_student.item()) < 1e-5 and abs(stats["distance"] - ref_dist.item()) < 1e-9
    # the teacher's CE as train_sft's CoT loss computes it; the gradient of the whole against the reference's
    _, ref_teacher, _ = model(b.teacher.idx, mask=b.teacher.mask, targets=b.teacher.targets)
    ref = ref_teacher + ref_student + 5.0 * ref_dist
    ref_grads = torch.autograd.grad(ref, list(model.parameters()) + list(proj.parameters()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


def test_a_baseline_run_starts_colar_with_a_new_head_and_is_refused_by_rl(tiny_runs, tmp_path, capsys):
    """A pause run's checkpoint carries its thought module where a CoLaR run keeps its latent head: CoLaR SFT from it
    takes its GPT only (loading the thought as a latent head failed inside torch), and RL refuses it in one line."""
    import train_rl
    import train_sft
    from common import UserError
    from conftest import tiny_colar_cfg, tiny_train_cfg
    pause = str(tmp_path / "pause")
    train_sft.main(tiny_train_cfg(tiny_runs["data"], pause, mode="pause", init_from=tiny_runs["cot"], max_steps=2,
                                  stages=1, stage_steps=1, c_thought=1, eval_every=2))
    capsys.readouterr()
    train_sft.main(tiny_colar_cfg(tiny_runs["data"], str(tmp_path / "colar"), pause, max_steps=1, eval_every=1))
    out = capsys.readouterr().out
    assert f"initialised from {pause}" in out and "its latent head too" not in out
    with pytest.raises(UserError, match="was trained with --mode pause: RL starts from a CoLaR checkpoint"):
        train_rl.main(train_rl.RLConfig(init_from=pause, data_dir=tiny_runs["data"], out_dir=str(tmp_path / "rl"),
                                        c=2, group=4, questions=8, max_latents=4, max_steps=1, device="cpu"))
