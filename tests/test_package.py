"""The top-level package: cheap to import, every advertised name resolves."""

import subprocess
import sys

import vit_patching


def test_import_is_lazy():
    code = (
        "import sys, vit_patching; "
        "heavy = [m for m in ('torch', 'timm', 'transformer_lens', 'plotly', 'captum') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_public_name_resolves():
    import vit_patching.patching.caap as caap_module

    for name in vit_patching.__all__:
        assert getattr(vit_patching, name) is not None, name
    assert vit_patching.caap is caap_module.caap
    assert callable(vit_patching.get_method) and "caap" in vit_patching.available_methods()
    assert "toy-shapes" in vit_patching.available_models()


def test_unknown_name_raises_attribute_error():
    try:
        vit_patching.no_such_thing  # noqa: B018
    except AttributeError as err:
        assert "no_such_thing" in str(err)
    else:
        raise AssertionError("expected AttributeError")
