"""TokenLayout: pos <-> (row, col), labels, grid reshapes, and agreement with timm's patch flattening."""
import pytest
import torch

from model_helpers import images, make_pair
from vit_patching.model import TokenLayout


def test_row_major_positions_with_prefix():
    layout = TokenLayout(grid_size=(2, 3), prefix_labels=("CLS", "REG0", "REG1"))
    assert (layout.n_prefix, layout.n_patches, layout.n_pos) == (3, 6, 9)
    expected = {(0, 0): 3, (0, 1): 4, (0, 2): 5, (1, 0): 6, (1, 1): 7, (1, 2): 8}
    for (r, c), p in expected.items():
        assert layout.pos(r, c) == p
        assert layout.row_col(p) == (r, c)
    assert layout.patch_positions() == [3, 4, 5, 6, 7, 8]
    assert layout.labels() == ["CLS", "REG0", "REG1", "P(0,0)", "P(0,1)", "P(0,2)", "P(1,0)", "P(1,1)", "P(1,2)"]


def test_labels_without_prefix_and_with_dist():
    assert TokenLayout((1, 2), ()).labels() == ["P(0,0)", "P(0,1)"]
    assert TokenLayout((1, 1), ("CLS", "DIST")).labels() == ["CLS", "DIST", "P(0,0)"]


@pytest.mark.parametrize("row, col", [(2, 0), (0, 3), (-1, 0), (0, -1)])
def test_pos_outside_grid_raises(row, col):
    with pytest.raises(ValueError, match=r"2x3 patch grid, got"):
        TokenLayout((2, 3), ("CLS",)).pos(row, col)


def test_row_col_errors():
    layout = TokenLayout((2, 3), ("CLS", "DIST"))
    with pytest.raises(ValueError, match="DIST is a prefix token"):
        layout.row_col(1)
    with pytest.raises(ValueError, match=r"\[2, 8\), got 8"):
        layout.row_col(8)
    with pytest.raises(ValueError, match="got -1"):
        layout.label(-1)
    with pytest.raises(ValueError, match="got 8"):
        layout.label(8)


def test_to_grid_and_from_grid():
    layout = TokenLayout((2, 3), ("CLS",))
    values = torch.arange(2 * 7, dtype=torch.float32).reshape(2, 7)
    grid = layout.to_grid(values)
    assert grid.shape == (2, 2, 3)
    assert torch.equal(grid[0], torch.tensor([[1.0, 2, 3], [4, 5, 6]]))
    for r in range(2):
        for c in range(3):
            assert grid[1, r, c] == values[1, layout.pos(r, c)]
    back = layout.from_grid(grid, prefix_fill=-1.0)
    assert back.shape == (2, 7) and torch.equal(back[:, 1:], values[:, 1:]) and (back[:, 0] == -1).all()
    # any leading axes
    assert layout.to_grid(torch.zeros(4, 5, 7)).shape == (4, 5, 2, 3)
    with pytest.raises(ValueError, match="7 positions on the last axis"):
        layout.to_grid(torch.zeros(2, 6))
    with pytest.raises(ValueError, match=r"grid must end in \(2, 3\)"):
        layout.from_grid(torch.zeros(2, 3, 2))


@pytest.mark.parametrize("kwargs", [dict(reg_tokens=2), dict(class_token=False, global_pool="avg")])
def test_row_major_order_matches_timm_conv_flattening(kwargs):
    """A single bright patch at (row 1, col 4) of a non-square 4x6 grid lands at layout.pos(1, 4), in timm too."""
    m, model = make_pair(img_size=(32, 48), **kwargs)
    layout = model.layout
    assert layout.grid_size == (4, 6)
    x = torch.zeros(1, 3, 32, 48)
    x[:, :, 8:16, 32:40] = torch.randn(3, 8, 8)  # patch row 1 (pixels 8..15), col 4 (pixels 32..39)
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter="hook_embed")
        timm_patches = m.patch_embed(x)  # [1, 24, d_model], timm's own flattening
    embed = cache["hook_embed"][0] - model.b_E  # patches carry only the conv bias, except the bright one
    moved = (embed[layout.n_prefix :].abs().sum(-1) > 1e-6).nonzero().flatten() + layout.n_prefix
    assert moved.tolist() == [layout.pos(1, 4)] == [model.cfg.n_prefix + 1 * 6 + 4]
    assert ((timm_patches[0] - model.b_E).abs().sum(-1) > 1e-6).nonzero().flatten().tolist() == [1 * 6 + 4]
    torch.testing.assert_close(cache["hook_embed"][0, layout.n_prefix :], timm_patches[0], atol=1e-6, rtol=0)
    grid = layout.to_grid((embed.abs().sum(-1) > 1e-6).float())
    assert grid.nonzero().tolist() == [[1, 4]]


def test_model_layouts():
    _, dist = make_pair("deit_tiny_distilled_patch16_224")
    assert dist.layout.labels()[:3] == ["CLS", "DIST", "P(0,0)"]
    _, reg = make_pair(reg_tokens=2)
    assert reg.layout.prefix_labels == ("CLS", "REG0", "REG1") and reg.layout.n_pos == reg.cfg.n_pos == 19
    _, dyn = make_pair(dynamic_img_size=True)
    x = images(1, 48, 64)
    lay = dyn.layout_for(x)
    assert lay.grid_size == (6, 8) and lay.n_pos == 49
    assert dyn.layout.grid_size == (4, 4)  # the configured size
    # the grid never comes from the last axis alone (64 here would give nonsense)
    assert dyn.grid_size_for(x) == (6, 8)


def test_to_grid_accepts_any_dtype():
    """Masks and indices are laid out on the grid too, not only float maps."""
    layout = TokenLayout((2, 2), ("CLS",))
    mask = torch.tensor([False, True, False, False, True])
    assert layout.to_grid(mask).tolist() == [[True, False], [False, True]]
    assert layout.from_grid(layout.to_grid(mask)).tolist() == [False, True, False, False, True]
    idx = torch.arange(5)
    assert layout.to_grid(idx).tolist() == [[1, 2], [3, 4]]
