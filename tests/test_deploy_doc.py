"""docs/DEPLOY.md's install steps as the deploy tier (tests/deploy_vm) extracts and runs them.

The tier runs the document's ```bash deploy``` blocks in a VM; these checks are the cheap part of that on the
host: the extractor finds exactly the tagged blocks (indented ones in list items too, nothing else), the script it
makes is valid bash, and the document's blocks install, configure and enable the service in that order.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.deploy_vm.extract_deploy import ExtractError, apt_packages, deploy_blocks, main, script

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_MD = ROOT / "docs" / "DEPLOY.md"

SAMPLE = """# Title

```sh
echo not-tagged
```

```bash deploy
sudo apt update
sudo apt install -y pkg-a pkg-b  # comment
```

- a list item:

    ```bash deploy
    apt-get install --no-install-recommends pkg-c && echo done
    ```

~~~bash deploy
echo tilde
~~~

```bash deploy-not
echo near-miss
```

````bash deploy
echo four
```
echo still-inside
````
"""


def test_only_blocks_tagged_exactly_bash_deploy_in_document_order() -> None:
    blocks = deploy_blocks(SAMPLE)
    assert [b.line for b in blocks] == [7, 14, 18, 26]
    assert blocks[0].text == "sudo apt update\nsudo apt install -y pkg-a pkg-b  # comment"
    assert blocks[1].text == "apt-get install --no-install-recommends pkg-c && echo done"  # indentation removed
    assert blocks[2].text == "echo tilde"
    assert blocks[3].text == "echo four\n```\necho still-inside"  # a shorter fence does not close a longer one
    assert "not-tagged" not in script(SAMPLE) and "near-miss" not in script(SAMPLE)


def test_apt_packages_are_read_from_apt_and_apt_get_lines() -> None:
    assert apt_packages(SAMPLE) == ["pkg-a", "pkg-b", "pkg-c"]


def test_a_document_without_deploy_blocks_or_with_an_unclosed_one_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ExtractError, match="no ```bash deploy blocks"):
        script("```sh\necho hi\n```\n")
    with pytest.raises(ExtractError, match="line 1: .* never closed"):
        deploy_blocks("```bash deploy\necho hi\n")
    doc = tmp_path / "DEPLOY.md"
    doc.write_text("nothing here\n")
    assert main([str(doc)]) == 1
    assert "no ```bash deploy blocks" in capsys.readouterr().err


def test_deploy_md_script_is_valid_bash_and_installs_configures_and_enables_in_order() -> None:
    text = script(DEPLOY_MD.read_text(encoding="utf-8"))
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)
    # The tier's guest has no network: setup.sh pre-installs what these lines name (tests/deploy_vm/README.md).
    assert apt_packages(DEPLOY_MD.read_text(encoding="utf-8"))
    order = [text.find(s) for s in ("pip install", "/etc/dkey/config.toml", " init", "enable --now key-server")]
    assert -1 not in order and order == sorted(order), order
