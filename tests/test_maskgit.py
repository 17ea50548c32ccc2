"""MaskGIT-style generator: masked training objective and parallel decoding."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

from hf_vq.generators import MaskGITConfig, MaskGITForClassConditionalGeneration
from hf_vq.generators.blocks import rope_2d_table
from hf_vq.generators.sampling import masking_schedule, multinomial_from_uniform

VOCAB, CLASSES, GRID = 16, 4, 4
N = GRID**2


def tiny_model(k: int = 2, seed: int = 0, **overrides) -> MaskGITForClassConditionalGeneration:
    torch.manual_seed(seed)
    kwargs = dict(
        vocab_size=VOCAB,
        num_codebooks=k,
        num_classes=CLASSES,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        grid_size=GRID,
    )
    return MaskGITForClassConditionalGeneration(MaskGITConfig(**{**kwargs, **overrides})).eval()


def random_ids(k: int = 2, batch: int = 3) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, k, N), generator=torch.Generator().manual_seed(1))


def test_layout_has_a_mask_row_per_table():
    model = tiny_model(2)
    keys = set(model.state_dict())
    assert {"tok_embeddings_1.weight", "tok_embeddings_2.weight", "aggregation_layer.weight", "output_2.weight"} <= keys
    assert model.tok_embeddings_1.weight.shape == (VOCAB + 1, 32)
    assert model.output_1.weight.shape == (VOCAB, 32)
    assert model.config.mask_token == VOCAB


def test_masking_schedule_is_cosine_and_strictly_decreasing():
    assert masking_schedule(16, 5) == [15, 12, 9, 4, 0]
    assert masking_schedule(3, 6) == [2, 1, 1, 1, 1, 0]  # more steps than tokens: one stays masked till the end
    assert masking_schedule(7, 1) == [0]


def test_random_mask_counts_follow_the_cosine_law():
    model = tiny_model()
    mask = model.random_mask(4000, torch.device("cpu"), torch.Generator().manual_seed(0))
    counts = mask.sum(1)
    assert counts.min() >= 1 and counts.max() <= N
    # ceil(cos(pi r / 2) N) with r ~ U[0, 1): E[count] = N * 2 / pi (+ ~0.5 for the ceiling)
    assert abs(counts.float().mean().item() - (N * 2 / math.pi + 0.5)) < 0.3


def test_loss_is_label_smoothed_cross_entropy_on_masked_positions_only():
    model = tiny_model(2)
    ids, labels = random_ids(), torch.tensor([0, 1, CLASSES])
    masked = torch.zeros(3, N, dtype=torch.bool)
    masked[:, :5] = True
    out = model(ids, labels, masked_positions=masked)
    assert out.logits.shape == (3, 2, N, VOCAB)
    logits = model.predict(ids.masked_fill(masked[:, None], VOCAB), labels)
    torch.testing.assert_close(out.logits, logits)
    expected = torch.stack(
        [
            F.cross_entropy(logits[:, j, :5].reshape(-1, VOCAB), ids[:, j, :5].reshape(-1), label_smoothing=0.1)
            for j in range(2)
        ]
    ).mean()
    torch.testing.assert_close(out.loss, expected)
    # a masked position's true ids are hidden from the model: changing them leaves every logit as it was
    changed = ids.clone()
    changed[:, :, 0] = (changed[:, :, 0] + 1) % VOCAB
    assert torch.equal(model(changed, labels, masked_positions=masked).logits, out.logits)


def test_attention_is_bidirectional():
    model = tiny_model(2)
    ids, labels = random_ids(batch=1), torch.tensor([1])
    base = model.predict(ids, labels)
    changed = ids.clone()
    changed[0, 0, -1] = (changed[0, 0, -1] + 1) % VOCAB
    assert (model.predict(changed, labels) - base)[:, :, 0].abs().max() > 0  # the first position sees the last


def test_training_forward_backpropagates():
    model = tiny_model(2).train()
    out = model(random_ids(), torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert out.masked_positions.any(1).all()
    assert model.tok_embeddings_2.weight.grad.abs().sum() > 0


def test_an_eval_forward_masks_each_grid_as_a_function_of_its_ids():
    """transformers' eval contract: the same inputs give the same outputs (an evaluation's loss repeats), here
    whatever the batch a grid sits in; distinct grids still get their own masking ratios."""
    model, labels = tiny_model(2), torch.tensor([0, 1, 2])
    ids = random_ids()
    first, second = model(ids, labels), model(ids, labels)
    assert torch.equal(first.masked_positions, second.masked_positions) and torch.equal(first.loss, second.loss)
    assert torch.equal(model(ids[1:2], labels[1:2]).masked_positions, first.masked_positions[1:2])
    many = torch.randint(0, VOCAB, (64, 2, N), generator=torch.Generator().manual_seed(3))
    counts = model(many, torch.zeros(64, dtype=torch.long)).masked_positions.sum(1)
    assert len(counts.unique()) > 5  # ratios spread as the training law's, not one ratio for every grid
    other = model(ids, labels, generator=torch.Generator().manual_seed(5))  # a generator still chooses
    assert not torch.equal(other.masked_positions, first.masked_positions)
    model.train()
    masks = [model(ids, labels).masked_positions for _ in range(2)]  # training keeps drawing fresh masks
    assert not torch.equal(*masks)


def test_hashed_uniform_numbers_are_uniform_and_independent_of_the_batch():
    from hf_vq.generators.modeling_maskgit import hashed_uniform

    keys = torch.randint(0, 16384, (4000, 16), generator=torch.Generator().manual_seed(0))
    u = hashed_uniform(keys, 9)
    assert u.shape == (4000, 9) and 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.std()) - 12**-0.5) < 0.01
    assert torch.equal(hashed_uniform(keys[7:8], 9), u[7:8])
    correlations = torch.corrcoef(u.t()) - torch.eye(9)
    assert float(correlations.abs().max()) < 0.06


@pytest.mark.parametrize("k", [1, 3])
def test_sample_shape_range_and_all_positions_filled(k):
    tokens = tiny_model(k).sample([0, 2, CLASSES], num_inference_steps=4, guidance_scale=2.0, top_k=8, top_p=0.9)
    assert tokens.shape == (3, k, N) and tokens.dtype == torch.long
    assert int(tokens.min()) >= 0 and int(tokens.max()) < VOCAB  # no mask token left


def test_same_seed_same_tokens():
    model = tiny_model()
    a = model.sample([0, 1], generator=torch.Generator().manual_seed(4))
    b = model.sample([0, 1], generator=torch.Generator().manual_seed(4))
    c = model.sample([0, 1], generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_list_of_generators_gives_each_sample_its_own_stream():
    model = tiny_model(2)
    alone = model.sample([1], num_inference_steps=4, generator=[torch.Generator().manual_seed(7)])
    paired = model.sample([0, 1], num_inference_steps=4,
                          generator=[torch.Generator().manual_seed(6), torch.Generator().manual_seed(7)])
    assert torch.equal(alone[0], paired[1])


def test_inverse_cdf_draws_follow_the_probabilities_and_skip_impossible_tokens():
    probs = torch.tensor([[0.0, 0.1, 0.0, 0.6, 0.3, 0.0]])
    edges = torch.tensor([0.0, 0.1 - 1e-6, 0.1 + 1e-6, 0.7 + 1e-6, 1 - 1e-7])  # U in [0, 1)
    assert multinomial_from_uniform(probs.expand(5, -1), edges).tolist() == [1, 1, 3, 4, 4]
    uniform = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(multinomial_from_uniform(probs.expand(len(uniform), -1), uniform), minlength=6)
    torch.testing.assert_close(counts / len(uniform), probs[0], atol=5e-3, rtol=0)


def test_revealed_positions_follow_the_schedule_and_are_never_masked_again():
    model = tiny_model(2)
    states = []
    model.sample([0, 3], num_inference_steps=6, guidance_scale=1.5,
                 callback=lambda step, tokens: states.append(tokens.clone()))
    assert len(states) == 6
    previous = None
    for state, expected_masked in zip(states, masking_schedule(N, 6), strict=True):
        masked = state == VOCAB
        assert torch.equal(masked[:, 0], masked[:, 1])  # whole positions, all sub-tokens together
        assert masked[:, 0].sum(1).tolist() == [expected_masked] * 2
        if previous is not None:
            known = previous != VOCAB
            assert torch.equal(state[known], previous[known])
        previous = state


def test_guidance_one_is_unguided_and_zero_is_unconditional():
    model = tiny_model(2)

    def run(scale, labels=(0, 1)):
        return model.sample(list(labels), num_inference_steps=4, guidance_scale=scale,
                            generator=torch.Generator().manual_seed(2))

    unguided = model.sample([0, 1], num_inference_steps=4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(run(1.0), unguided)
    assert torch.equal(run(0.0), run(1.0, (CLASSES, CLASSES)))
    assert not torch.equal(run(0.0), run(1.0))


def test_sample_rejects_bad_settings():
    model = tiny_model()
    for kwargs, message in [
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(num_inference_steps=N + 1), rf"num_inference_steps must lie in \[1, {N}\] \(each step reveals"),
        (dict(num_inference_steps=2.0), "num_inference_steps must be an integer"),
        (dict(choice_temperature=-1.0), "choice_temperature"),
        (dict(guidance_scale=-0.5), "guidance_scale"),
        (dict(top_k=VOCAB + 1), "top_k"),
        (dict(top_p=0.0), "top_p"),
    ]:
        with pytest.raises(ValueError, match=message):
            model.sample([0], **kwargs)
    with pytest.raises(ValueError, match="class_labels must lie"):
        model.sample([-1])


def test_hidden_states_are_the_embeddings_then_every_block_and_the_heads_read_the_last():
    model = tiny_model(2)
    ids, labels = random_ids(), torch.tensor([0, 1, CLASSES])
    visible = torch.zeros(3, N, dtype=torch.bool)
    with torch.no_grad():
        out = model(ids, labels, masked_positions=visible, output_hidden_states=True)
        states = out.hidden_states
        assert len(states) == model.config.num_hidden_layers + 1
        assert all(s.shape == (3, 1 + N, 32) for s in states)
        assert torch.equal(out.logits, model.predict(ids, labels))  # nothing masked: the clean grids' logits
        assert torch.equal(states[0], torch.cat([model.cls_embedding(labels), model.embed_tokens(ids)], dim=1))
        rope = rope_2d_table(GRID, 8, 10000.0, 1)
        for i, layer in enumerate(model.layers):
            assert torch.equal(states[i + 1], layer(states[i], rope, causal=False))
        last = model.norm(states[-1][:, 1:])
        assert torch.equal(out.logits, torch.stack([model.head_logits(last, j) for j in range(2)], dim=1))


def test_hidden_states_tuple_order_config_default_and_sampling_unchanged():
    model = tiny_model(2)
    ids, labels = random_ids(), torch.tensor([0, 1, CLASSES])
    masked = torch.zeros(3, N, dtype=torch.bool)
    masked[:, :5] = True
    plain = model(ids, labels, masked_positions=masked)
    loss, logits, positions, states = model(ids, labels, masked_positions=masked, output_hidden_states=True,
                                            return_dict=False)
    assert torch.equal(loss, plain.loss) and torch.equal(logits, plain.logits) and torch.equal(positions, masked)
    assert len(states) == 3 and plain.hidden_states is None
    before = model.sample([0, CLASSES], num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    model.config.output_hidden_states = True
    assert len(model(ids, labels, masked_positions=masked).hidden_states) == 3
    after = model.sample([0, CLASSES], num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(after, before)


def test_steps_default_to_maskgits_twelve_at_most_one_per_position():
    assert tiny_model().num_sampling_steps() == 12
    assert tiny_model(grid_size=3).num_sampling_steps() == 9
    assert tiny_model().num_sampling_steps(__import__("numpy").int64(5)) == 5


def test_predict_checks_its_input_and_takes_the_mask_token():
    model = tiny_model()
    ids, labels = random_ids(), torch.tensor([0, 1, 2])
    masked = ids.masked_fill(ids < 4, model.config.mask_token)
    assert model.predict(masked.int(), labels).shape == (3, 2, N, VOCAB)
    with pytest.raises(ValueError, match=rf"input_ids must lie in \[0, {VOCAB + 1}\)"):
        model.predict(masked + 1, labels)
    with pytest.raises(ValueError, match="class_labels must lie"):
        model.predict(masked, torch.tensor([0, 1, CLASSES + 1]))


def test_ids_of_another_integer_dtype_give_the_long_ids_loss():
    model = tiny_model()
    ids, labels = random_ids(), torch.tensor([0, 1, 2])
    assert torch.equal(model(ids.int(), labels).loss, model(ids, labels).loss)


def test_forward_rejects_bad_input():
    model = tiny_model()
    ids, labels = random_ids(), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="positions"):
        model(ids[:, :, :-1], labels)
    with pytest.raises(ValueError, match="input_ids must lie"):
        model(ids.masked_fill(ids == 0, VOCAB), labels)
    with pytest.raises(ValueError, match="masked_positions"):
        model(ids, labels, masked_positions=torch.ones(3, N))


def test_save_load_round_trip_and_auto_model(tmp_path):
    model = tiny_model(2)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, MaskGITForClassConditionalGeneration)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    seed = 9
    assert torch.equal(
        model.sample([1], generator=torch.Generator().manual_seed(seed)),
        loaded.sample([1], generator=torch.Generator().manual_seed(seed)),
    )
    bf16 = MaskGITForClassConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert bf16.sample([1, 2], num_inference_steps=3).shape == (2, 2, N)


def test_forward_traces_as_one_graph_for_fullgraph_compile_and_export():
    model, ids, labels = tiny_model(2), random_ids(), torch.tensor([0, 1, 2])
    mask = model(ids, labels).masked_positions
    expected = model(ids, labels, masked_positions=mask).logits
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # a graph break would raise
    torch.testing.assert_close(compiled(ids, labels, masked_positions=mask).logits, expected)
    assert torch.equal(compiled(ids, labels).masked_positions, mask)  # the eval mask traces: pure tensor ops
    exported = torch.export.export(model, (ids, labels), kwargs={"masked_positions": mask})
    torch.testing.assert_close(exported.module()(ids, labels, masked_positions=mask).logits, expected)
