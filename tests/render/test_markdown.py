"""``--output markdown`` of the CI dry-run, rendered to HTML by a real CommonMark renderer
(markdown-it-py, tables on, raw HTML allowed as GitHub and GitLab allow ``<details>``): every
change, op, error and warning is in the HTML, the table counts are right, and what a branch
writes into names and messages stays text.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt

from reconciler.plan import Change, Op, Plan, PlanError, PlanWarning
from reconciler.render import markdown
from reconciler.render import text as text_mod
from tests.clirun import reconcile
from tests.test_ci_dryrun import Repo


class Html(HTMLParser):
    """What the rendered HTML holds: every start tag, the text, the table rows (cells'
    text), and the text of each ``<details>`` block."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []
        self.rows: list[list[str]] = []
        self.details: list[str] = []
        self.prose: list[str] = []  # the text outside code blocks
        self._cell: list[str] | None = None
        self._depth = 0
        self._pre = 0
        self.feed(source)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "details":
            self._depth += 1
            self.details.append("")
        elif tag == "pre":
            self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "details":
            self._depth -= 1
        elif tag == "pre":
            self._pre -= 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if not self._pre:
            self.prose.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._depth:
            self.details[-1] += data

    @property
    def all_text(self) -> str:
        return "".join(self.text)


def to_html(md: str) -> Html:
    renderer = MarkdownIt("commonmark", {"html": True}).enable("table")
    return Html(renderer.render(md))


def table(html: Html) -> dict[str, list[str]]:
    header, *rows = html.rows
    assert header == ["host", "creates", "updates", "deletes", "moves", "errors"]
    assert all(len(r) == 6 for r in rows), rows
    return {r[0]: r[1:] for r in rows}


# --- a real CI dry-run ---------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "repo")


def test_every_change_op_and_error_of_a_real_run_is_in_the_html(repo: Repo, tmp_path: Path) -> None:
    base = repo.write()
    repo.write(members="192.0.2.0/24, 203.0.113.0/24", rx=8192, last=5, node="kvm2")
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    (snaps / "b.json").write_text('{"format_version": 1, "host": ')  # truncated: an error
    args = ("--against", base, "--snapshots", str(snaps))
    md = repo.plan(*args, "--output", "markdown")
    assert md.returncode == 1, md.stderr  # host b's error fails the check
    doc = json.loads(repo.plan(*args, "--output", "json").stdout)
    # Rendered from the JSON document: the same document gives the same Markdown.
    assert markdown.render_ci(doc) == md.stdout
    assert md.stdout.splitlines()[0] == markdown.MARKER
    html = to_html(md.stdout)
    text = html.all_text
    plans = {p["host"]: p for p in doc["hosts"]}
    assert plans["b"]["errors"] and not plans["a"]["errors"]
    (error,) = plans["b"]["errors"]
    assert error["message"] in text
    # Errors come before the table and the plans.
    assert text.index(error["message"]) < text.index("creates") < text.index("Plan for host")
    rows = table(html)
    assert set(rows) == {"a", "b", "ctl"}
    for host, plan in plans.items():
        s = plan["summary"]
        want = [s["create"], s["update"], s["delete"], s["move"], len(plan["errors"])]
        assert rows[host] == [str(n) for n in want]
    assert rows["a"] == ["0", "2", "0", "0", "0"] and rows["ctl"] == ["0", "1", "0", "1", "0"]
    # Hosts with errors first; each host's plan in its own <details>, every op in it.
    assert html.tags.count("details") == 3 and html.details[0].startswith("b: ")
    for plan in plans.values():
        (block,) = [d for d in html.details if d.startswith(f"{plan['host']}: ")]
        for change in plan["changes"]:
            assert change["address"] in block
            for op in change["ops"]:
                assert text_mod.op_line(op) in block
    assert "> move vm1 kvm1 -> kvm2" in text and "~ rings.rx: 4096 -> 8192" in text


def test_unchanged_hosts_are_counted_and_named(repo: Repo) -> None:
    base = repo.write()
    repo.write(rx=8192)
    md = repo.plan("--against", base, "--output", "markdown")
    assert md.returncode == 0, md.stderr
    text = to_html(md.stdout).all_text
    assert "1 host(s) planned" in text and "2 unchanged" in text
    assert f"Unchanged since {base[:12]}, not planned (2): b, ctl." in text
    assert list(table(to_html(md.stdout))) == ["a"]


def test_each_shard_has_its_own_marker(repo: Repo) -> None:
    base = repo.write()
    repo.write(members="192.0.2.0/24")
    md = repo.plan("--against", base, "--output", "markdown", "--shard", "2/3").stdout
    assert md.splitlines()[0] == "<!-- reconcile-plan shard 2/3 -->"
    assert "Shard 2/3: " in to_html(md).all_text


def test_markdown_is_for_the_ci_dry_run_only(repo: Repo) -> None:
    repo.write()
    r = repo.plan("--output", "markdown")  # --all-hosts: the CI dry-run
    assert r.returncode == 1  # nothing to compare with: an error on each host, in Markdown
    assert r.stdout.startswith(markdown.MARKER) and "nothing to compare with" in r.stdout
    r = reconcile("--dry-run", "--repo", str(repo.ds), "--output", "markdown")
    assert r.returncode == 1 and "for the CI dry-run" in r.stderr


# --- warnings ------------------------------------------------------------------------------


def ci_doc(*plans: dict[str, Any], against: str | None = "main") -> dict[str, Any]:
    return {"format_version": 1, "commit": "0" * 40, "against": against, "hosts": list(plans)}


def plan_dict(plan: Plan) -> dict[str, Any]:
    d = plan.to_dict()
    d["status"], d["basis"] = "planned", {"kind": "against", "rev": "main"}
    return d


def test_warnings_link_resets_archive_deletions_and_refusals_are_visible() -> None:
    rings = Op("set_rings", {"nic": "eth0", "rx": 2048, "bounces_link": True})
    deletes = (
        Op("delete_archive", {"set": "etc", "archive": "etc-20240101-000000", "reason": "old"}),
        Op("delete_archive", {"set": "etc", "archive": "etc-20240102-000000", "reason": "old"}),
    )
    plan = Plan(
        host="web1",
        changes=[
            Change("nic", "eth0", "update", (rings,)),
            Change("backup", "etc", "delete", deletes, warnings=("snapshot is 9 days old",)),
            Change(
                "ipset",
                "mgmt",
                "delete",
                (Op("destroy_set", {"set": "mgmt"}),),
                refused="would lock out the current SSH client",
            ),
        ],
        warnings=[PlanWarning("backup/var", "archive var-20991231-000000 is dated 2099-12-31")],
    )
    html = to_html(markdown.render_ci(ci_doc(plan_dict(plan))))
    text = html.all_text
    attention = text[text.index("Needs attention") : text.index("creates")]
    for needle in (
        "nic/eth0: resets the link",
        "backup/etc: deletes archive etc-20240101-000000 (old)",
        "backup/etc: deletes archive etc-20240102-000000 (old)",
        "backup/etc: snapshot is 9 days old",
        "backup/var: archive var-20991231-000000 is dated 2099-12-31",
    ):
        assert needle in attention, needle
    errors = text[text.index("Errors") : text.index("Needs attention")]
    assert "ipset/mgmt: refused: would lock out the current SSH client" in errors
    assert table(html) == {"web1": ["0", "1", "2", "0", "1"]}  # the refusal is an error


# --- hostile content -----------------------------------------------------------------------

#: The tags the Markdown itself makes: any other tag would have come from the content.
RENDERER_TAGS = {"h3", "h4", "p", "strong", "ul", "li", "table", "thead", "tbody", "tr", "th",
                 "td", "details", "summary", "pre", "code"}  # fmt: skip
HOSTILE = (
    "x | y <script>alert(1)</script> <img src=x onerror=alert(2)> `code` ``` "
    "@octocat #1 [link](https://evil.example) **bold** </details> --> <!-- \u202eevil\n# head"
)


def test_names_and_messages_from_the_branch_are_inert() -> None:
    create = Op("create_set", {"set": HOSTILE, "type": "hash:net"})
    change = Change("ipset", f"set{HOSTILE}", "create", (create,))
    plan = plan_dict(
        Plan(
            host=f"h|<b>{HOSTILE}",
            changes=[change],
            errors=[PlanError(f"nic/{HOSTILE}", HOSTILE)],
            warnings=[PlanWarning("backup/x", HOSTILE)],
        )
    )
    md = markdown.render_ci(ci_doc(plan, against=HOSTILE))
    assert md.splitlines()[0] == markdown.MARKER
    rendered = MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    assert rendered.count("<!--") == 1 and rendered.count("-->") == 1  # the marker only
    html = Html(rendered)
    # No tag, link, emphasis or code span came from the content: only the renderer's own.
    assert set(html.tags) <= RENDERER_TAGS
    assert html.tags.count("code") == html.tags.count("pre") == 1  # the plan's code block
    assert html.tags.count("details") == 1 and html.tags.count("table") == 1
    assert "<script" not in rendered and "<img" not in rendered and "<a " not in rendered
    rows = table(html)  # six cells in every row: no pipe split a cell
    assert len(rows) == 1
    text = html.all_text
    # The text is all there, shown as written; outside code blocks (where GitHub and GitLab
    # mention nobody) no one is mentioned and no issue is referenced.
    prose = "".join(html.prose)
    assert prose.count("<script>alert(1)</script> <img src=x") >= 5  # as text, everywhere
    assert "</details>" in text and "[link](https://evil.example) **bold**" in prose
    assert "@octocat" not in prose and "@\u200boctocat" in prose
    assert "#1" not in prose and "#\u200b1" in prose
    assert "\u202e" not in text and "\\u202e" in text


def test_a_long_fleet_stays_under_the_comment_limit() -> None:
    plans = []
    for i in range(400):
        ops = tuple(Op("add_member", {"set": "m", "member": f"10.{i}.{j}.0/24"}) for j in range(5))
        change = Change("ipset", "m", "update", ops)
        plans.append(plan_dict(Plan(host=f"host{i:03d}", changes=[change])))
    md = markdown.render_ci(ci_doc(*plans), limit=20_000)
    assert len(md) < 20_500
    html = to_html(md)
    assert "more host plan(s) not shown" in html.all_text
    rows = table(html)
    assert "host000" in rows and all(v == ["0", "1", "0", "0", "0"] for v in rows.values())
    full = markdown.render_ci(ci_doc(*plans), limit=10**7)
    assert len(table(to_html(full))) == 400 and to_html(full).tags.count("details") == 400


def test_an_unchanged_hosts_warning_is_still_shown() -> None:
    """The VM controller without a host file is unchanged, but its warning stays visible."""
    ctl = plan_dict(Plan(host="ctl", warnings=[PlanWarning("host", "no hosts/ctl.yaml: ...")]))
    ctl["status"] = "unchanged"
    html = to_html(markdown.render_ci(ci_doc(ctl)))
    text = html.all_text
    assert "Needs attention (1)" in text and "ctl host: no hosts/ctl.yaml: ..." in text
    assert "Unchanged since main, not planned (1): ctl." in text
    assert html.rows == []  # no table: nothing planned
