"""The pane in a real browser (Debian's chromium driven by Playwright) against a real server
and the real Orchestrator with the scripted engine.

Screenshots of the main states go to ``test-output/screenshots/``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import msgspec
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from apitest_support import Server, api_settings
from conductor.state import fold as conductor_fold
from tests.conductor.test_superseded_writer import STEP as LOST_STEP
from tests.conductor.test_superseded_writer import ended_before_pickup_run, lost_agent_run

pytestmark = [pytest.mark.ray, pytest.mark.browser]

SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
TERMINAL = re.compile("Finished|Failed|Cancelled")
# The first launch of a session also starts the model deployment (seconds on this machine).
expect.set_options(timeout=30_000)


@pytest.fixture(scope="module")
def server(backend, repos_root):
    with Server(backend, api_settings(backend, repos_root)) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    # A refused request (4xx) is logged by the browser itself; anything else is ours.
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Failed to load resource" not in m.text else None)
    pg.goto(server.url + "/")
    expect(pg.locator(".orch-conn")).to_have_attribute("data-state", re.compile("idle|open|connecting"))
    pg.errors = errors  # type: ignore[attr-defined]
    yield pg
    context.close()
    assert errors == [], errors


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def slash_launch(page: Page, command: str):
    box = page.locator(".orch-composer-input")
    box.fill("")
    box.type(command)
    expect(page.locator(".orch-slash-menu")).to_be_hidden()  # a full command closes the menu
    count = page.locator("orch-run-pane").count()
    box.press("Enter")
    expect(page.locator("orch-run-pane")).to_have_count(count + 1)
    run_id = page.locator("orch-run-pane").first.get_attribute("run-id")  # the newest comes first
    return page.locator(f"orch-run-pane[run-id='{run_id}']")


def wait_terminal(pane, timeout=120_000):
    expect(pane.locator(".orch-pane-head .orch-status")).to_have_text(TERMINAL, timeout=timeout)


def test_slash_command_launches_and_one_agent_streams_live_at_a_time(page: Page):
    box = page.locator(".orch-composer-input")
    box.click()
    box.type("/")
    menu = page.locator(".orch-slash-menu")
    expect(menu).to_be_visible()
    options = menu.locator("[role=option]")
    expect(options).to_have_count(6)
    expect(options.first).to_have_attribute("aria-selected", "true")
    box.press("ArrowDown")
    expect(options.nth(1)).to_have_attribute("aria-selected", "true")
    expect(box).to_have_attribute("aria-activedescendant", options.nth(1).get_attribute("id"))
    shot(page, "01-slash-menu")
    box.press("Escape")
    expect(menu).to_be_hidden()
    box.type("code-r")  # "/code-r": one match left
    expect(menu).to_be_visible()
    expect(options).to_have_count(1)
    box.press("Enter")  # picks it
    expect(box).to_have_value("/code-review ")
    box.type("small look at the handler")
    box.press("Enter")

    pane = page.locator("orch-run-pane").first
    expect(pane.locator(".orch-pane-title")).to_have_text("code-review")
    expect(pane.locator(".orch-band")).to_have_text("small")
    expect(pane.locator(".orch-band-reason")).to_contain_text("Small")
    expect(pane.locator(".orch-msg-user")).to_contain_text("/code-review small look at the handler")
    agents = pane.locator(".orch-agent")
    expect(agents).to_have_count(4)
    for i in range(4):  # collapsed to start with
        expect(agents.nth(i).locator(".orch-agent-row")).to_have_attribute("aria-expanded", "false")

    first = agents.first
    first.locator(".orch-agent-row").click()
    expect(first.locator(".orch-agent-row")).to_have_attribute("aria-expanded", "true")
    stream = first.locator(".orch-stream-body")
    lengths = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and first.get_attribute("data-status") != "finished":
        lengths.append(len(stream.inner_text()))
        if len(lengths) == 25:
            shot(page, "02-agent-streaming")
        page.wait_for_timeout(100)
    grew = sorted(set(lengths))
    assert len(grew) >= 4, f"the stream did not visibly grow: {grew}"
    assert lengths == sorted(lengths) or max(lengths) == lengths[-1]
    expect(first.locator(".orch-tool[data-tool=read_file]")).to_have_count(1)
    expect(first.locator(".orch-tool-denied[data-tool=write_file]")).to_contain_text("denied")

    # Expanding another agent collapses the first: one at a time.
    second = agents.nth(1)
    second.locator(".orch-agent-row").click()
    expect(second.locator(".orch-agent-row")).to_have_attribute("aria-expanded", "true")
    expect(first.locator(".orch-agent-row")).to_have_attribute("aria-expanded", "false")
    expect(first.locator(".orch-stream")).to_be_hidden()
    expect(pane.locator(".orch-agent-row[aria-expanded=true]")).to_have_count(1)
    # Keyboard: arrows move between agents, Enter toggles.
    second.locator(".orch-agent-row").focus()
    page.keyboard.press("ArrowDown")
    expect(agents.nth(2).locator(".orch-agent-row")).to_be_focused()
    page.keyboard.press("Enter")
    expect(agents.nth(2).locator(".orch-agent-row")).to_have_attribute("aria-expanded", "true")
    expect(second.locator(".orch-agent-row")).to_have_attribute("aria-expanded", "false")

    wait_terminal(pane)
    expect(pane.locator(".orch-pane-head .orch-status")).to_have_text("Finished")
    report = pane.locator(".orch-report")
    expect(report).to_be_visible()
    expect(report).to_contain_text("Shell command built from request input")
    expect(report.locator(".orch-recommendation")).not_to_be_empty()
    assert report.bounding_box()["y"] < pane.locator(".orch-roster").bounding_box()["y"]  # report on top
    expect(report.locator("script, style, [onclick]")).to_have_count(0)
    pane.locator(".orch-thread").evaluate("el => el.scrollTop = 0")
    shot(page, "03-report-on-top")


class CatalogHeld:
    """A page of the pane whose flow-catalog requests are held until ``release``: the
    composer is up, and knows no workflow yet."""

    def __init__(self, browser, server):
        self.context = browser.new_context(viewport={"width": 1440, "height": 900})
        self.page = self.context.new_page()
        self.held = []
        self.page.route("**/api/flows", lambda route: self.held.append(route))
        self.page.goto(server.url + "/")
        while not self.held:
            self.page.wait_for_timeout(20)

    def release(self) -> None:
        for route in self.held:
            route.continue_()
        self.page.unroute("**/api/flows")


@pytest.fixture
def catalog_held(browser, server):
    held = CatalogHeld(browser, server)
    yield held
    held.context.close()


def test_a_slash_typed_before_the_workflows_arrive_opens_the_menu_when_they_do(catalog_held):
    page = catalog_held.page
    box = page.locator(".orch-composer-input")
    box.click()
    box.type("/")
    menu = page.locator(".orch-slash-menu")
    expect(menu).to_be_hidden()  # nothing to list yet
    catalog_held.release()
    expect(menu).to_be_visible()
    expect(menu.locator("[role=option]")).to_have_count(6)


def test_a_command_sent_before_the_workflows_arrive_waits_for_them(catalog_held):
    # Sent blind, "/investigate" (whose symptom is required) would be refused by the server;
    # it must instead wait for the catalog and open the launcher to ask for the symptom.
    page = catalog_held.page
    launches = []
    page.on("request", lambda r: launches.append(r.url) if r.method == "POST" and "/api/runs" in r.url else None)
    box = page.locator(".orch-composer-input")
    box.click()
    box.type("/investigate")
    box.press("Enter")
    page.wait_for_timeout(300)
    dialog = page.locator("dialog.orch-dialog")
    expect(dialog).to_be_hidden()
    catalog_held.release()
    expect(dialog).to_be_visible()
    expect(dialog.locator("select[name=flow]")).to_have_value("investigate")
    expect(page.locator(".orch-slash-menu")).to_be_hidden()
    assert launches == []



def test_enter_twice_while_a_launch_is_going_out_launches_one_run(page: Page):
    launches = []  # the launch requests, held until both Enters are in

    def hold_launches(route):
        if route.request.method == "POST":
            launches.append(route)
        else:
            route.continue_()

    page.route(lambda url: url.endswith("/api/runs"), hold_launches)
    box = page.locator(".orch-composer-input")
    box.type("/code-review small only once")
    box.press("Enter")
    box.press("Enter")
    page.wait_for_timeout(300)
    assert len(launches) == 1
    launches[0].continue_()
    pane = page.locator("orch-run-pane")
    expect(pane).to_have_count(1)
    expect(box).to_have_value("")
    wait_terminal(pane)
    assert len(launches) == 1

def test_an_agent_with_nothing_back_yet_reads_waiting_for_the_model(page: Page):
    pane = slash_launch(page, "/code-review small slow-start")
    first = pane.locator(".orch-agent").first
    expect(first).to_have_attribute("data-status", "running")
    expect(first.locator(".orch-agent-status")).to_have_text("waiting for the model")
    shot(page, "03b-waiting-for-the-model")
    wait_terminal(pane)
    expect(first.locator(".orch-agent-status")).to_have_text("finished")


def test_an_agent_whose_answer_was_not_json_says_what_was_kept(page: Page):
    pane = slash_launch(page, "/code-review small plain-prose")
    wait_terminal(pane)
    reviewer = pane.locator(".orch-agent", has_text="junior-developer")
    # Before: "unparsed output"; the reader says what it found (its full note is the title).
    expect(reviewer.locator(".orch-agent-fail")).to_have_text("no JSON object and no Markdown findings in the output")
    expect(reviewer.locator(".orch-agent-status")).to_have_text("finished")


def test_an_agent_shows_what_its_prompt_went_without(page: Page):
    # The default 2,048-token context cuts a persona brief: the open stream says what was left out.
    pane = slash_launch(page, "/code-review small")
    wait_terminal(pane)
    run_id = pane.get_attribute("run-id")
    base = page.url.rstrip("/").split("?")[0].split("#")[0]
    report = page.request.get(f"{base}/api/runs/{run_id}/report?format=json").json()
    agents = [a for a in report["agents"] if a["left_out"]]
    assert agents, "no prompt left anything out: the test needs a case that does"
    for agent in agents:
        row = pane.locator(f".orch-agent[data-step='{agent['step_id']}']")
        row.locator(".orch-agent-row").click()
        expect(row.locator(".orch-stream-note")).to_have_text(
            "Answered without (left out of its prompt for space): " + "; ".join(agent["left_out"]))
    shot(page, "03c-what-a-prompt-went-without")
    quiet = [a for a in report["agents"] if not a["left_out"]]
    for agent in quiet:
        row = pane.locator(f".orch-agent[data-step='{agent['step_id']}']")
        row.locator(".orch-agent-row").click()
        expect(row.locator(".orch-stream-body")).to_be_visible()
        expect(row.locator(".orch-stream-note")).to_have_count(0)


def test_the_workflow_button_opens_the_launcher(page: Page):
    dialog = page.locator("dialog.orch-dialog")
    flow = dialog.locator("select[name=flow]")
    # A slash command missing the flow's required input opens the launcher on that flow.
    box = page.locator(".orch-composer-input")
    box.type("/investigate")
    box.press("Enter")
    expect(dialog).to_be_visible()
    expect(flow).to_have_value("investigate")
    expect(dialog.locator("textarea[name=symptom]")).to_have_attribute("required", "")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()

    page.locator(".orch-composer-workflow").click()
    expect(dialog).to_be_visible()
    expect(flow).to_be_focused()
    flow.select_option("investigate")
    symptom = dialog.locator("textarea[name=symptom]")
    expect(symptom).to_be_visible()
    expect(dialog.locator("input[name=base]")).to_be_hidden()  # investigate takes no base ref
    expect(dialog.locator(".orch-flow-about")).to_contain_text("root cause")
    shot(page, "04-launcher")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()

    # A refused launch is explained in the dialog; a good one opens a pane.
    page.locator(".orch-top-workflow").click()
    flow.select_option("code-review")
    dialog.locator("input[name=base]").fill("no-such-branch")
    dialog.locator("button[type=submit]").click()
    expect(dialog.locator(".orch-form-error")).to_contain_text("no-such-branch")
    expect(dialog).to_be_visible()
    dialog.locator("input[name=base]").fill("")
    flow.select_option("investigate")
    symptom.fill("The handler runs whatever token it is given")
    dialog.locator("select[name=band]").select_option("small")
    dialog.locator("button[type=submit]").click()
    expect(dialog).to_be_hidden()
    pane = page.locator("orch-run-pane").first
    expect(pane.locator(".orch-pane-title")).to_have_text("investigate")
    expect(pane.locator(".orch-msg-user")).to_contain_text("Symptom: The handler runs whatever token it is given")
    wait_terminal(pane)


def test_two_runs_in_two_panes_and_cancelling_one(page: Page):
    keep = slash_launch(page, "/code-review small the first")
    stop = slash_launch(page, "/code-review small the second")
    expect(page.locator("orch-run-pane")).to_have_count(2)
    a, b = keep.bounding_box(), stop.bounding_box()
    assert abs(a["x"] - b["x"]) > 300 and abs(a["y"] - b["y"]) < 5  # side by side
    expect(stop.locator(".orch-act-cancel")).to_be_enabled()
    # The history follows a run's status while it runs, not only when it was launched.
    expect(stop.locator(".orch-pane-head .orch-status")).to_have_text("Running")
    listed = page.locator(f"#orch-side .orch-history-item[data-run='{stop.get_attribute('run-id')}']")
    expect(listed).to_have_attribute("data-status", "running")
    shot(page, "05-two-panes")
    stop.locator(".orch-act-cancel").click()
    expect(stop.locator(".orch-pane-head .orch-status")).to_have_text("Cancelled", timeout=30_000)
    expect(stop.locator(".orch-banner")).to_contain_text("Cancelled")
    expect(stop.locator(".orch-act-cancel")).to_be_hidden()
    wait_terminal(keep)
    expect(keep.locator(".orch-pane-head .orch-status")).to_have_text("Finished")
    shot(page, "06-one-cancelled")


def test_two_panes_of_one_run_both_follow_it_and_a_launch_reaches_the_document_once(page: Page):
    # A host page may show one run twice (in its chat thread and in a side panel), and mounts
    # a pane on each "orch-launched" it hears.
    page.evaluate("() => { window.launched = []; "
                  "document.addEventListener('orch-launched', (e) => launched.push(e.detail.run_id)); }")
    subscribes = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda f: subscribes.append(f) if '"type":"subscribe"' in f else None))
    run_id = slash_launch(page, "/code-review small slow-start in two panes").get_attribute("run-id")
    app_pane = page.locator(".orch-panes orch-run-pane")
    assert page.evaluate("() => launched") == [run_id]
    # Two more panes join once the run is under way: each sees it from its start.
    expect(app_pane.locator(".orch-agent-status").first).to_have_text("waiting for the model")
    page.evaluate("""id => { for (const where of ['thread', 'side']) { const p = document.createElement('orch-run-pane');
        p.setAttribute('run-id', id); p.dataset.where = where; document.body.append(p); } }""", run_id)
    thread, side = page.locator("orch-run-pane[data-where=thread]"), page.locator("orch-run-pane[data-where=side]")
    for pane in (thread, side):
        expect(pane.locator(".orch-pane-title")).to_have_text("code-review")
        expect(pane.locator(".orch-msg-user")).to_contain_text("slow-start in two panes")
        expect(pane.locator(".orch-agent")).to_have_count(4)
    assert len(subscribes) == 1  # the panes share the server's subscription
    # A reconnect subscribes once for the three of them.
    page.evaluate("async () => (await import('/orch.js')).client().socket.drop()")
    deadline = time.monotonic() + 10
    while len(subscribes) < 2 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    page.wait_for_timeout(300)
    assert len(subscribes) == 2
    # The last to join leaves mid-run: the others keep following the run.
    seen = thread.evaluate("p => p.run.lastSeq")
    side.evaluate("p => p.remove()")
    for pane in (app_pane, thread):
        wait_terminal(pane)
        expect(pane.locator(".orch-pane-head .orch-status")).to_have_text("Finished")
    assert thread.evaluate("p => p.run.lastSeq") > seen
    folded = "p => [...p.run.steps].map(([id, st]) => [id, st.status, st.text, st.tools.length])"
    assert thread.evaluate(folded) == app_pane.evaluate(folded)
    for pane in (app_pane, thread):
        expect(pane.locator(".orch-report")).to_contain_text("Shell command built from request input")
    assert thread.locator(".orch-report").text_content() == app_pane.locator(".orch-report").text_content()
    assert page.evaluate("() => launched") == [run_id]


def test_history_reopens_a_run_and_its_report_can_be_saved_copied_and_sent(page: Page, server):
    with server.client() as http:
        runs = http.get("/api/runs", params={"status": "finished", "flow": "code-review"}).json()["runs"]
    assert runs, "an earlier test finishes a code review"
    run_id = runs[0]["run_id"]
    with server.client() as http:
        cancelled = http.get("/api/runs", params={"status": "cancelled"}).json()["runs"]
    assert cancelled, "an earlier test cancels a run"
    with server.client() as http:
        counts = http.get(f"/api/runs/{run_id}/report", params={"format": "json"}).json()["counts"]
    assert counts["findings"], "the scripted review keeps findings"
    side = page.locator("#orch-side")
    if side.is_hidden():
        page.locator(".orch-top-history").click()
    expect(side).to_be_visible()
    side.locator(".orch-history-status").select_option("finished")
    # Only finished runs are listed, not the cancelled one.
    expect(side.locator(f".orch-history-item[data-run='{cancelled[0]['run_id']}']")).to_have_count(0)
    expect(side.locator(".orch-history-item:not([data-status='finished'])")).to_have_count(0)
    item = side.locator(f".orch-history-item[data-run='{run_id}'] button")
    expect(item).to_be_visible()
    # The card counts what the report kept, not every claim the agents raised.
    kept = f"{counts['findings']} finding{'s' if counts['findings'] > 1 else ''}"
    expect(item.locator(".orch-history-sub")).to_contain_text(kept)
    if counts["unverified"]:
        expect(item.locator(".orch-history-sub")).to_contain_text(f"{counts['unverified']} unverified")
    shot(page, "07-history")
    side.locator(".orch-history-q").fill("zzz-no-such-run")
    expect(side.locator(".orch-empty-note")).to_be_visible()
    side.locator(".orch-history-q").fill("")
    item.click()
    pane = page.locator(f"orch-run-pane[run-id='{run_id}']")
    expect(pane.locator(".orch-pane-head .orch-status")).to_have_text("Finished")
    expect(pane.locator(".orch-report")).to_contain_text("Shell command built from request input")

    with server.client() as http:
        md = http.get(f"/api/runs/{run_id}/report").text
    for fmt in ("md", "html", "json"):
        pane.locator(".orch-act-save").click()
        with page.expect_download() as dl:
            pane.locator(f".orch-menu-item[data-format={fmt}]").click()
        download = dl.value
        assert download.suggested_filename == f"{run_id}-report.{fmt}"
        saved = Path(download.path()).read_text()
        if fmt == "md":
            assert saved == md
        else:
            assert run_id in saved

    pane.locator(".orch-act-copy").click()
    expect(page.locator(".orch-toast", has_text="copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == md

    pane.locator(".orch-act-send").click()
    message = pane.locator(".orch-msg-bot")
    expect(message).to_contain_text("Report sent to chat")
    message.locator("summary").click()
    expect(message.locator(".orch-msg-md")).to_contain_text("code-review")
    shot(page, "08-sent-to-chat")


def test_analytics_charts(page: Page):
    wait_terminal(slash_launch(page, "/code-review small"))  # a run of its own to chart
    page.locator(".orch-top-analytics").click()
    panel = page.locator("#orch-analytics-panel")
    expect(panel.locator("figure.orch-chart")).to_have_count(10)
    expect(panel.locator("figure.orch-chart svg rect").first).to_be_visible()
    data = page.request.get(page.url.rstrip("/") + "/api/analytics").json()
    raised = sum(r["findings"] for r in data["analytics_flow"])
    reported = sum(r["report_findings"] for r in data["analytics_flow"])
    runs = sum(r["runs"] for r in data["analytics_flow"])
    # The agents' raw claims and what the reports kept are different numbers, named apart.
    expect(panel.locator(".orch-analytics-summary")).to_contain_text(
        f"{raised} finding{'' if raised == 1 else 's'} raised, {reported} in reports")
    expect(panel.locator(".orch-analytics-summary")).to_contain_text(
        f"{runs} run{'' if runs == 1 else 's'} · ")
    # Scripted steps take well under a second: their averages read in tenths, not "0s" each.
    steps = panel.locator("figure.orch-chart", has_text="Average step duration by persona")
    expected = [f"{r['avg_duration_s']:.1f}s" for r in data["analytics_persona"]]
    assert all(float(v[:-1]) < 10 for v in expected)
    expect(steps.locator(".orch-chart-value")).to_have_text(expected)
    shot(page, "09-analytics")


@pytest.mark.parametrize("events", [lost_agent_run(), ended_before_pickup_run()], ids=["superseded", "ended"])
def test_the_pane_folds_a_step_picked_up_from_a_running_agent_as_the_conductor_does(page: Page, events):
    st = conductor_fold(events).steps[LOST_STEP]
    folded = page.evaluate(
        """async ([events, stepId]) => {
            const { apply, newRun } = await import('/js/fold.js');
            const run = newRun(events[0].run_id);
            events.forEach((ev, i) => apply(run, ev, i + 1));
            const st = run.steps.get(stepId);
            return [st.text, st.status, st.tokens_in, st.tokens_out, st.tools.map((t) => t.called.call_id)];
        }""",
        [msgspec.to_builtins(events), LOST_STEP],
    )
    assert folded == [st.text, st.status, st.tokens_in, st.tokens_out, [c.called.call_id for c in st.tools]]


def test_the_sanitiser_keeps_markup_and_drops_anything_active(page: Page):
    html = page.evaluate(
        """async () => {
            const { sanitize } = await import('/js/sanitize.js');
            const box = document.createElement('div');
            box.append(sanitize('<html><head><style>p{}</style></head><body>'
              + '<h2 onclick="x()">Title</h2><script>window.bad=1</script>'
              + '<a href="javascript:alert(1)">j</a><a href="https://example.org/">ok</a>'
              + '<img src=x onerror="window.bad=2"><iframe src="/"></iframe><p style="color:red">text</p>'
              + '</body></html>'));
            return [box.innerHTML, window.bad === undefined];
        }"""
    )
    markup, untouched = html
    assert untouched
    # Chromium reports the hostile handlers it met while parsing, as blocked by the pane's CSP
    # (a second line of defence: the sanitiser drops them anyway).
    blocked = [e for e in page.errors if "Content Security Policy" in e and "blocked" in e]
    assert blocked
    page.errors[:] = [e for e in page.errors if e not in blocked]
    assert "<h2>Title</h2>" in markup and "text" in markup
    assert "onclick" not in markup and "script" not in markup and "javascript:" not in markup
    assert "<img" not in markup and "<iframe" not in markup and "style" not in markup
    assert 'href="https://example.org/"' in markup


def test_a_phone_gets_icon_only_controls_and_a_stacked_layout(browser, server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        page.goto(server.url + "/")
        expect(page.locator("#orch-side")).to_be_hidden()
        for name in ("Workflow", "History", "Analytics"):
            btn = page.locator(f".orch-top-actions button[aria-label='{name}']")
            expect(btn).to_be_visible()
            expect(btn.locator(".orch-label")).to_be_hidden()  # icon only, named for assistive tech
        expect(page.locator(".orch-composer-send .orch-label")).to_be_hidden()
        first = slash_launch(page, "/code-review small on a phone")
        second = slash_launch(page, "/code-overview small")
        for label in ("Copy report as Markdown", "Save report as a file", "Send report to chat", "Cancel run", "Close pane"):
            control = first.locator(f"[aria-label='{label}']")
            expect(control).to_be_visible()
            expect(control.locator(".orch-label")).to_be_hidden()
        # Both boxes from one moment: the panes grow as their agents stream, and two reads
        # could see the layout in between.
        a, b = page.evaluate(
            "panes => panes.map(p => { const r = p.getBoundingClientRect(); "
            "return {x: r.x, y: r.y, height: r.height}; })",
            [first.element_handle(), second.element_handle()],
        )
        assert abs(a["x"] - b["x"]) < 5 and abs(a["y"] - b["y"]) >= min(a["height"], b["height"]) - 1  # stacked
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing runs off the side
        first.locator(".orch-agent-row").first.click()
        page.wait_for_timeout(1500)
        page.screenshot(path=str(SHOTS / "10-phone.png"))
        page.locator(".orch-top-history").click()
        expect(page.locator("#orch-side")).to_be_visible()
        page.keyboard.press("Escape")
        expect(page.locator("#orch-side")).to_be_hidden()
        wait_terminal(first)
        wait_terminal(second)
        report = first.locator(".orch-report")
        expect(report).to_be_visible()
        report.scroll_into_view_if_needed()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # wide tables scroll inside
        page.screenshot(path=str(SHOTS / "11-phone-report.png"))
    finally:
        context.close()


def test_with_a_token_the_pane_works_from_a_link_that_carries_it(browser, backend, repos_root):
    settings = api_settings(backend, repos_root, token="pane-token")
    with Server(backend, settings) as locked:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        try:
            page.goto(locked.url + "/?token=pane-token")
            expect(page).to_have_url(locked.url + "/")  # the token leaves the address bar
            box = page.locator(".orch-composer-input")
            box.type("/")
            expect(page.locator(".orch-slash-menu [role=option]")).to_have_count(6)  # /api/flows answered
            box.press("Escape")
            pane = slash_launch(page, "/code-review small with a token")
            expect(pane.locator(".orch-agent")).to_have_count(4)  # the WebSocket is streaming
            expect(page.locator(".orch-conn")).to_have_attribute("data-state", "open")
            page.reload()  # the tab keeps its token; the pane comes back
            expect(page.locator("orch-run-pane .orch-agent")).to_have_count(4)
            wait_terminal(page.locator("orch-run-pane").first)
        finally:
            context.close()


EMBED = """<!doctype html>
<html><head><meta charset="utf-8"><title>A chat app</title>
<link rel="stylesheet" href="{server}/orch.css">
<script>window.orchestratorConfig = {{ server: "{server}" }};</script>
<script type="module">
  import "{server}/orch.js";
  // The chat app mounts a run pane in the thread whenever the composer launches a run.
  document.addEventListener("orch-launched", (e) => {{
    const pane = document.createElement("orch-run-pane");
    pane.setAttribute("run-id", e.detail.run_id);
    document.querySelector("#thread").append(pane);
  }});
  document.addEventListener("orch-open-launcher", (e) => document.querySelector("orch-launcher").open(e.detail.flow));
</script></head>
<body><h1>Chat</h1><div id="thread"></div><orch-composer></orch-composer><orch-launcher></orch-launcher></body></html>
"""


def test_the_components_embed_in_a_page_of_another_origin(browser, backend, repos_root, tmp_path):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    host = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path)))
    origin = f"http://127.0.0.1:{host.server_address[1]}"
    threading.Thread(target=host.serve_forever, daemon=True).start()
    try:
        with Server(backend, api_settings(backend, repos_root), allow_origins=(origin,)) as srv:
            (tmp_path / "chat.html").write_text(EMBED.format(server=srv.url))
            context = browser.new_context(viewport={"width": 1100, "height": 900})
            page = context.new_page()
            try:
                page.goto(f"{origin}/chat.html")
                box = page.locator("orch-composer .orch-composer-input")
                box.type("/")
                expect(page.locator(".orch-slash-menu [role=option]")).to_have_count(6)
                box.press("Escape")
                box.fill("/code-review small from the chat app")
                box.press("Enter")
                pane = page.locator("#thread orch-run-pane")
                expect(pane).to_have_count(1)
                expect(pane.locator(".orch-agent")).to_have_count(4)
                wait_terminal(pane)
                expect(pane.locator(".orch-report")).to_contain_text("Shell command built from request input")
                page.screenshot(path=str(SHOTS / "12-embedded.png"), full_page=True)
                page.locator("orch-composer .orch-composer-workflow").click()
                expect(page.locator("dialog.orch-dialog")).to_be_visible()
            finally:
                context.close()
    finally:
        host.shutdown()
        host.server_close()
