"""Installing plugins without an installer, for the tool tests."""

from __future__ import annotations

from pathlib import Path

from tandem.tools.registry import ENTRY_POINT_GROUP

EXAMPLE_PLUGIN_SOURCE = Path(__file__).resolve().parents[1] / 'plugins' / 'tandem_example_plugin'


class FakeInstall:
    """Writes dist-info directories into a directory on `sys.path`.

    A `*.dist-info` directory with METADATA and entry_points.txt is all `importlib.metadata` reads,
    so a distribution written here is found exactly like one an installer put in site-packages.
    """

    def __init__(self, site: Path) -> None:
        self.site = site

    def distribution(self, name: str, entry_points: dict[str, str], *, version: str = '0.1.0') -> None:
        dist_info = self.site / f'{name.replace("-", "_")}-{version}.dist-info'
        dist_info.mkdir()
        (dist_info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n')
        lines = [f'[{ENTRY_POINT_GROUP}]', *(f'{key} = {value}' for key, value in entry_points.items())]
        (dist_info / 'entry_points.txt').write_text('\n'.join(lines) + '\n')

    def module(self, name: str, source: str) -> None:
        (self.site / f'{name}.py').write_text(source)
