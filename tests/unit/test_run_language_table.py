"""The languages table and what a host without some toolchain answers: availability as the
sandboxes would see it, a 400 naming the offered languages for an unknown one, and for a
known one whose toolchain is missing, a run line that says so (never a wrong answer)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tci.config import Settings
from tci.errors import BadRequest
from tci.runs import languages
from tci.runs import sandboxfusion as sf
from tci.runs.manager import RunManager
from tci.runs.models import RunRequest
from tci.runs.verdicts import Verdict


@pytest.fixture
def bare(tmp_path: Path) -> RunManager:
    """A server whose runtime has no tci-languages directory (make toolchains never ran)."""
    (tmp_path / "site").mkdir()
    return RunManager(Settings(runtime_dir=tmp_path), None)


def test_languages_needing_the_runtimes_packages_are_missing_without_them(bare: RunManager
                                                                         ) -> None:
    assert bare.available["nodejs"] is False
    assert bare.available["typescript"] is False
    assert bare.available["python"] is True
    assert bare.available["bash"] is True


def test_a_run_in_a_missing_language_gets_a_line_saying_so(bare: RunManager) -> None:
    spec = bare.spec(RunRequest(code="console.log(1)", language="js"))
    assert "'nodejs' is not available" in spec.unavailable
    assert "make toolchains" in spec.unavailable and "python" in spec.unavailable

    async def run() -> tuple[Verdict, str]:
        bare.admit(1)
        result = await bare.launch(spec)
        return result.verdict, result.stderr

    verdict, stderr = asyncio.run(run())
    assert verdict is Verdict.SANDBOX_ERROR  # the server's lack: never scored as wrong
    assert stderr == spec.unavailable


def test_an_unknown_language_is_a_400_naming_the_offered_ones(bare: RunManager) -> None:
    with pytest.raises(BadRequest, match=r"'cobol' is not offered.*python.*bash"):
        bare.spec(RunRequest(code="x", language="cobol"))


def test_sandboxfusion_refuses_a_missing_language_naming_what_is_offered(bare: RunManager
                                                                        ) -> None:
    with pytest.raises(BadRequest) as refused:
        sf.tci_language("nodejs", bare.available)
    offered = refused.value.message.split("it offers: ")[1].split(", ")
    assert "python" in offered and "R" in offered and "bash" in offered
    assert "nodejs" not in offered and "typescript" not in offered
    assert sf.tci_language("R", bare.available) == "R"


def test_every_sandboxfusion_language_name_maps_to_one_of_ours() -> None:
    for name in ("python", "cpp", "java", "nodejs", "typescript", "go", "rust", "bash", "R",
                 "ruby", "lua", "php", "perl", "js", "ts"):
        assert sf.LANGUAGE_NAMES[name] in languages.BY_NAME


def test_cpp_uses_the_precompiled_header_only_when_it_comes_first() -> None:
    """make toolchains built it: a program whose first directive is <bits/stdc++.h> gets it;
    one with a macro before that include (which could change the header) does not."""
    languages.availability(Settings().runtime_dir / "site")
    first = "// a sample\n#include <bits/stdc++.h>\nint main(){}\n"
    defined_before = "#define N 10\n#include <bits/stdc++.h>\nint main(){}\n"
    assert languages.CPP_PCH_DIR in languages._cpp_compile(first, 1 << 30)
    assert languages.CPP_PCH_DIR not in languages._cpp_compile(defined_before, 1 << 30)
