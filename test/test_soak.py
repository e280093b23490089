"""The overload soak, 30-second version (the 10-minute run is `seg-perception soak --minutes 10`, figures in the
README): the node as its own process fed 640x480 frames at 4x the rate it can process them, a subscriber on
every output. Bounds looser than the command's defaults (a short run on a shared CI machine), but a backlog,
a leak of more than a quarter of the node's memory, a lost or double-counted frame, an error or a traceback
still fail it."""
import json

import pytest

pytest.importorskip('rclpy', reason='ROS 2 rclpy not installed (pip install .[ros])')

from seg_perception.offline import cli  # noqa: E402


def test_soak_30_seconds(tmp_path, capfd):
    report_path = tmp_path / 'soak.json'
    code = cli.main(['soak', '--minutes', '0.5', '--max-rss-growth', '0.25', '--max-age-ratio', '4',
                     '--min-overload', '1.5', '--json', str(report_path)])
    out = capfd.readouterr().out
    report = json.loads(report_path.read_text())
    assert code == 0, out
    assert all(c['passed'] for c in report['checks'].values()), out
    counts = report['counters']
    assert counts['received'] == counts['processed'] + counts['dropped'] and counts['dropped'] > 0
    assert counts['published'] == counts['processed'] > 0
    assert report['age_ms']['labels']['count'] > 0 and report['label_info_received'] >= 1
    assert 'check: age | PASS' in out
