"""The pack's frontend in the real ComfyUI frontend, driven by Playwright through Debian's /usr/bin/chromium
(scripts/host.py installs both): the gamma widget (js/flexip_gamma.js) and the UI-format example workflows
(example_workflows/*.json) that the template browser lists. Every test runs against two frontends (conftest.py):
the pinned ComfyUI's comfyui-frontend-package 1.32.9 and the newest release.

The live re-queue is driven with real mouse events on the LiteGraph canvas, and checked against the
server's /queue and /history: the prompts the server got, not only what the page meant to send.
"""
import json
import time
import urllib.request
from pathlib import Path

import pytest

import host

REPO = Path(__file__).resolve().parent.parent.parent
PACK = host.PACK_LINK.name  # the pack's folder name under custom_nodes: its URL prefix on the server
EXTENSION = "comfyui-flexip.GammaWidget"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TEMPLATES = ["flexip_basic", "flexip_gamma_sweep", "flexip_gamma_schedule", "flexip_gamma_sweep_batch",
             "flexip_gamma_sweep_score", "flexip_save_subject", "flexip_load_subject", "flexip_style_transfer"]
DEBOUNCE_S = 0.4  # js/flexip_gamma.js DEBOUNCE_MS
GATED = 11  # the FlexIPGatedApply node of flexip_basic


def api_workflow(name):
    return json.loads((REPO / "example_workflows" / "api" / f"{name}_api.json").read_text())


def is_prompt_post(request):
    return request.method == "POST" and request.url.split("?")[0].endswith("/api/prompt")


def server_prompts(client):
    """Every prompt the server has, id -> "running", "pending" or "history". A prompt queued moments ago
    is only in /queue: read it first, so that a prompt finishing between the two reads is still seen."""
    queue = client.get_json("/queue")
    where = {item[1]: state for state in ("running", "pending") for item in queue[f"queue_{state}"]}
    return {**{prompt_id: "history" for prompt_id in client.get_json("/history")}, **where}


def new_prompts(client, before):
    return {k: v for k, v in server_prompts(client).items() if k not in before}


# --- The browser: one chromium per module, a fresh page per test. ---

@pytest.fixture(scope="module")
def browser(ui_server, tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no {CHROMIUM}: run `python3 scripts/host.py` (it installs Debian's chromium)")
    from playwright.sync_api import sync_playwright
    # Skip the first-visit templates dialog. The answer is empty, so not through Client.post_json.
    request = urllib.request.Request(ui_server.url + "/api/settings", json.dumps({"Comfy.TutorialCompleted": True}).encode(),
                                     {"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).read()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1600, "height": 900})
        yield context
        context.close()


class Frontend:
    """One page of the ComfyUI frontend, with its page errors and console errors collected."""

    def __init__(self, context, server, version, settings=None):
        self.page = context.new_page()
        self.errors = []
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        if settings:
            # Settings for this page only, injected into the frontend's GET /api/settings: the server's
            # settings file is shared with every other session on this host and stays untouched.
            def with_settings(route):
                if route.request.method != "GET":
                    return route.fallback()
                response = route.fetch()
                route.fulfill(response=response, json={**response.json(), **settings})
            self.page.route("**/api/settings", with_settings)
        self.page.goto(server.url)
        # Usable once the frontend's startup is over. window.app appears when the app is set up, and the startup
        # goes on to restore the last workflow (this browser profile's drafts of earlier pages) or open the
        # default graph: loaded on top of a template loaded before that, it left frontend 1.49.6 with merged
        # graphs (31 or 12 nodes for 16) and stray links. Every frontend has an active workflow once the
        # startup's graph is in; 1.49.6 and later clear the spinner only when the whole startup is done.
        self.page.wait_for_function("""() => window.app?.vueAppReady && window.app.graph && window.LiteGraph
            && window.app.extensionManager.workflow.activeWorkflow && !window.app.extensionManager.spinner""",
                                    timeout=60_000)
        assert self.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__") == version
        names = self.page.evaluate("() => app.extensions.map(e => e.name)")
        assert EXTENSION in names, f"{EXTENSION} not registered; page errors: {self.errors}"

    def evaluate(self, script, arg=None):
        return self.page.evaluate(script, arg)

    def load_template(self, name):
        """Load a template as the template browser does (useTemplateWorkflows.loadWorkflowTemplate): fetch it
        from the server's template route and app.loadGraphData it. Returns the errors the load caused."""
        before = len(self.errors)
        self.evaluate("""async ([pack, name]) => {
            const url = window.comfyAPI.api.api.apiURL(`/workflow_templates/${pack}/${name}.json`);
            await app.loadGraphData(await (await fetch(url)).json(), true, true, name, {openSource: 'template'});
            await new Promise(requestAnimationFrame);  // let Vue render any toast or dialog the load raised
        }""", [PACK, name])
        return self.errors[before:]

    def prompt(self):
        """app.graphToPrompt() of the loaded graph: {"output": API prompt, "workflow": UI workflow}."""
        return self.evaluate("async () => JSON.parse(JSON.stringify(await app.graphToPrompt()))")

    def widget(self, node_id, name):
        return self.evaluate("""([id, name]) => { const w = app.graph.getNodeById(id).widgets.find(w => w.name === name);
            return w && {type: w.type, value: w.value, serialize: w.serialize ?? null,
                         optionsSerialize: w.options?.serialize ?? null}; }""", [node_id, name])

    def show_node(self, node_id):
        """Scale 1, the node's top-left at (500, 300) of the canvas, drawn (which lays out its widgets)."""
        self.evaluate("""id => { const n = app.graph.getNodeById(id), ds = app.canvas.ds;
            ds.scale = 1; ds.offset = [500 - n.pos[0], 300 - n.pos[1]];
            app.canvas.setDirty(true, true); app.canvas.draw(true, true); }""", node_id)

    def widget_point(self, node_id, name, fraction):
        """Page coordinates of a point in a widget, `fraction` of the way along the range a LiteGraph slider
        maps to its min..max (SliderWidget.onDrag: x from margin 15 to width - 15)."""
        return self.evaluate("""([id, name, f]) => {
            const n = app.graph.getNodeById(id), w = n.widgets.find(w => w.name === name);
            const width = w.width || n.size[0];
            const graph = [n.pos[0] + 15 + f * (width - 30), n.pos[1] + w.y + LiteGraph.NODE_WIDGET_HEIGHT / 2];
            const [x, y] = app.canvas.ds.convertOffsetToCanvas(graph);
            const rect = app.canvas.canvas.getBoundingClientRect();
            return [rect.left + x, rect.top + y]; }""", [node_id, name, fraction])

    def set_inputs(self, prompt):
        """Set every widget value of an API prompt on the graph's nodes of the same ids."""
        self.evaluate("""prompt => { for (const [id, node] of Object.entries(prompt)) {
            const n = app.graph.getNodeById(+id);
            for (const [name, value] of Object.entries(node.inputs)) {
                if (Array.isArray(value)) continue;
                const w = n.widgets.find(w => w.name === name);
                if (!w) throw new Error(`node ${id} has no widget ${name}`);
                w.value = value;
            } } }""", prompt)

    def close(self):
        self.page.close()


# The templates' model hints make frontend 1.32.9 open a modal missing-models dialog over the canvas (the test
# server has random models under other names); test_help_pages_and_model_hints.py tests that dialog.
NO_MISSING_MODELS_DIALOG = {"Comfy.Workflow.ShowMissingModelsWarning": False}


@pytest.fixture
def frontend(browser, ui_server, frontend_version):
    page = Frontend(browser, ui_server, frontend_version, settings=NO_MISSING_MODELS_DIALOG)
    yield page
    page.close()


def drag(frontend, node_id, fractions, release=True):
    """Press on the gamma slider at fractions[0], move through the others, release."""
    mouse = frontend.page.mouse
    frontend.show_node(node_id)
    mouse.move(*frontend.widget_point(node_id, "gamma", fractions[0]))
    mouse.down()
    for f in fractions[1:]:
        mouse.move(*frontend.widget_point(node_id, "gamma", f), steps=3)
    if release:
        mouse.up()


def click_widget(frontend, node_id, name):
    frontend.show_node(node_id)
    frontend.page.mouse.click(*frontend.widget_point(node_id, name, 0.5))


# --- a) The pack's files as the server serves them, and the two workflow formats as one graph. ---

def test_extension_is_listed_and_served(ui_client):
    url = f"/extensions/{PACK}/flexip_gamma.js"
    assert url in ui_client.get_json("/extensions")
    assert ui_client._request(url) == (REPO / "js" / "flexip_gamma.js").read_bytes()


def test_template_browser_lists_the_ui_workflows(ui_client):
    listed = ui_client.get_json("/api/workflow_templates").get(PACK, [])
    on_disk = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
    assert set(TEMPLATES) == set(on_disk)  # every template is tested
    assert sorted(listed) == on_disk  # every UI workflow, and the API-format ones in api/ not among them


def declared_inputs(client, class_type):
    """The inputs the server's node class declares; the server ignores any other a prompt gives it."""
    spec = client.get_json(f"/object_info/{class_type}")[class_type]["input"]
    return {*spec.get("required", {}), *spec.get("optional", {})}


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_loads_and_is_the_api_workflow(frontend, ui_client, name):
    ui = json.loads((REPO / "example_workflows" / f"{name}.json").read_text())
    assert ui["version"] == 0.4
    errors = frontend.load_template(name)
    # Resource 404s are the frontend's own noise (user.css, a LoadImage preview of a file not on this server).
    assert [e for e in errors if "Failed to load resource" not in e] == []
    # Schema validation, link fixing and missing nodes report through toasts and dialogs, not the console.
    assert frontend.evaluate("() => [...document.querySelectorAll('.p-toast-message')].map(e => e.innerText)") == []
    assert frontend.evaluate("() => document.querySelectorAll('.p-dialog').length") == 0
    assert frontend.evaluate("() => app.graph.nodes.length") == len(ui["nodes"])

    output = frontend.prompt()["output"]
    expected = api_workflow(name)
    assert sorted(output, key=int) == sorted(expected, key=int)
    for node_id, node in expected.items():
        got = output[node_id]
        assert got["class_type"] == node["class_type"], node_id
        # Frontend 1.32.9 also sends PreviewAny's display widget ("preview": ""), which the node does not declare.
        known = declared_inputs(ui_client, node["class_type"])
        assert {k: v for k, v in got["inputs"].items() if k in known} == node["inputs"], node_id
        if "title" in node.get("_meta", {}):  # the client finds nodes by title ("Positive")
            assert got["_meta"]["title"] == node["_meta"]["title"], node_id
    # Seeds stay fixed across queues: a live gamma change must not also change the noise.
    seeds = frontend.evaluate("""() => app.graph.nodes.filter(n => n.comfyClass === 'KSampler')
        .map(n => n.widgets.find(w => w.name === 'control_after_generate').value)""")
    assert seeds and set(seeds) == {"fixed"}


# --- b) The widget on FlexIPGatedApply. ---

def test_gated_apply_has_labelled_slider_and_live_toggle(frontend):
    frontend.load_template("flexip_basic")
    assert frontend.widget(GATED, "gamma")["type"] == "slider"
    live = frontend.widget(GATED, "live")
    assert live == {"type": "toggle", "value": False, "serialize": False, "optionsSerialize": False}

    # The end labels are drawn on the canvas: record the texts the node draws, and where.
    frontend.show_node(GATED)
    drawn = frontend.evaluate("""id => {
        const n = app.graph.getNodeById(id), ctx = app.canvas.ctx, fillText = ctx.fillText, texts = {};
        ctx.fillText = function (text, x, y, ...rest) { texts[text] = x; return fillText.call(this, text, x, y, ...rest); };
        try { app.canvas.draw(true, true); } finally { ctx.fillText = fillText; }
        return {texts, width: n.size[0]}; }""", GATED)
    texts, width = drawn["texts"], drawn["width"]
    assert "personalize" in texts and "preserve" in texts, sorted(texts)
    # The slider's left end is its min (gamma 0: personalize), its right end its max (gamma 1: preserve).
    assert texts["personalize"] < width / 3 and texts["preserve"] > 2 * width / 3


def test_live_toggle_is_never_sent_or_saved(frontend):
    frontend.load_template("flexip_basic")
    click_widget(frontend, GATED, "live")  # on: the toggle's state must not leak either way
    assert frontend.widget(GATED, "live")["value"] is True
    prompt = frontend.prompt()
    assert set(prompt["output"][str(GATED)]["inputs"]) == {
        "model", "flexip", "preservation", "personalization", "gamma", "strength", "start_at", "end_at"}
    (node,) = [n for n in prompt["workflow"]["nodes"] if n["id"] == GATED]
    assert node["widgets_values"] == [0.5, 1, 0, 1]  # gamma, strength, start_at, end_at: no "live"


# --- c) Live re-queue, checked against what the server ran. ---

@pytest.fixture
def runnable(frontend, test_prompt):
    """The basic template pointed at the test model files and reference image, at the test size and steps."""
    frontend.load_template("flexip_basic")
    prompt = test_prompt("flexip_basic_api.json")
    frontend.set_inputs(prompt)
    output = frontend.prompt()["output"]
    assert {k: v["inputs"] for k, v in output.items()} == {k: v["inputs"] for k, v in prompt.items()}
    return frontend


def switch_live_on(frontend, posts):
    click_widget(frontend, GATED, "live")
    assert frontend.widget(GATED, "live")["value"] is True
    assert posts == []  # switching live on queues nothing by itself
    # The times of the gamma widget's changes (each one restarts the debounce: the wrapper runs just
    # before the pack's own callback) and of the pointer releases, on the clock of request.timing.
    frontend.evaluate("""id => {
        window.changes = []; window.ups = [];
        const gamma = app.graph.getNodeById(id).widgets.find(w => w.name === 'gamma'), callback = gamma.callback;
        gamma.callback = function (...args) { window.changes.push(Date.now()); return callback.apply(this, args); };
        addEventListener('pointerup', () => { window.ups.push(Date.now()); }, true); }""", GATED)


def timeline(frontend, clear=False):
    """The recorded change and release times since the last clear."""
    return frontend.evaluate("""clear => { const t = {changes: window.changes, ups: window.ups};
        if (clear) { window.changes = []; window.ups = []; } return t; }""", clear)


def paused(times):
    """Whether two successive events of a drag came a debounce or more apart. On a loaded machine one
    event can take that long, and the debounce then rightly queues mid-drag: a drag the test did not mean."""
    return any(b - a >= DEBOUNCE_S * 1000 for a, b in zip(times, times[1:]))


def assert_debounced(posts, times):
    """The debounce's rule, whatever the drag's pace: a prompt is posted only a debounce after the last
    change before it, or after a release that followed that change."""
    for request in posts:
        start = request.timing["startTime"]
        last_change = max(t for t in times["changes"] if t <= start)
        released = any(last_change <= t <= start for t in times["ups"])
        assert released or start - last_change >= DEBOUNCE_S * 1000, (start, times)


def after_paused_drag(frontend, client, posts):
    """Release, check the paused drag against the rule, let the debounce run out and wait for every
    prompt it queued, so that the next try starts from an idle server."""
    frontend.page.mouse.up()
    frontend.page.wait_for_timeout(3 * DEBOUNCE_S * 1000)
    assert_debounced(posts, timeline(frontend, clear=True))
    for request in posts:
        client.wait(request.response().json()["prompt_id"], timeout=600)
    posts.clear()


def queued_once(frontend, client, before, posts, prompt_id, released):
    """The drag's prompt is the only one the page posted and the server got: any further queue from the
    drag would have come within a debounce of the release, and would still be in /queue."""
    entry = client.wait(prompt_id, timeout=600)
    frontend.page.wait_for_timeout(max(0, 3 * DEBOUNCE_S - (time.monotonic() - released)) * 1000)
    assert new_prompts(client, before) == {prompt_id: "history"}
    assert len(posts) == 1
    return entry["prompt"][2][str(GATED)]["inputs"]["gamma"]


# Each live test tries its drag up to three times, the second time backwards (a drag that ends where the
# last queue was has nothing new to send), until one runs at the pace it means.
TRIES = 3


def test_live_drag_queues_once_on_release(runnable, ui_client):
    """A quick drag: every move changes gamma within the debounce window; the release queues once."""
    frontend, page = runnable, runnable.page
    posts = []
    page.on("request", lambda r: is_prompt_post(r) and posts.append(r))
    switch_live_on(frontend, posts)
    fractions = [0.5, 0.55, 0.6, 0.7, 0.75, 0.8]
    for _ in range(TRIES):
        before = set(server_prompts(ui_client))
        with page.expect_request(is_prompt_post, timeout=5_000) as queued:
            drag(frontend, GATED, fractions)
            released = time.monotonic()
        times = timeline(frontend)
        if paused(times["changes"] + times["ups"][-1:]):
            after_paused_drag(frontend, ui_client, posts)
            fractions = fractions[::-1]
            continue
        gamma = frontend.widget(GATED, "gamma")["value"]
        assert abs(gamma - fractions[-1]) <= 0.02
        prompt_id = queued.value.response().json()["prompt_id"]
        # Queued by the release: after it, and sooner after the last change than the debounce can fire.
        start = queued.value.timing["startTime"]
        assert start >= times["ups"][-1], (start, times)
        assert start - times["changes"][-1] < DEBOUNCE_S * 1000, (start, times)
        assert queued_once(frontend, ui_client, before, posts, prompt_id, released) == gamma
        return
    pytest.fail(f"each of {TRIES} drags paused for a debounce between two of its events: the machine is too loaded")


def test_live_drag_that_rests_queues_once_after_the_debounce(runnable, ui_client):
    """A drag that rests while the button is still down: the debounce queues once on the pause; the
    release at the same value adds nothing."""
    frontend, page = runnable, runnable.page
    posts = []
    page.on("request", lambda r: is_prompt_post(r) and posts.append(r))
    switch_live_on(frontend, posts)
    fractions = [0.5, 0.4, 0.3]
    for _ in range(TRIES):
        before = set(server_prompts(ui_client))
        with page.expect_request(is_prompt_post, timeout=5_000) as queued:
            drag(frontend, GATED, fractions, release=False)
        times = timeline(frontend)
        if paused(times["changes"]):
            after_paused_drag(frontend, ui_client, posts)
            fractions = fractions[::-1]
            continue
        prompt_id = queued.value.response().json()["prompt_id"]
        # The debounce: nothing is queued sooner than DEBOUNCE after the drag's last change of gamma.
        since_last_change = queued.value.timing["startTime"] - times["changes"][-1]
        assert since_last_change >= DEBOUNCE_S * 1000, since_last_change
        page.mouse.up()
        released = time.monotonic()
        gamma = frontend.widget(GATED, "gamma")["value"]
        assert abs(gamma - fractions[-1]) <= 0.02
        assert queued_once(frontend, ui_client, before, posts, prompt_id, released) == gamma
        return
    pytest.fail(f"each of {TRIES} drags paused for a debounce between two of its events: the machine is too loaded")


def test_slider_with_live_off_queues_nothing(runnable, ui_client):
    frontend, page = runnable, runnable.page
    posts = []
    page.on("request", lambda r: is_prompt_post(r) and posts.append(r))
    before = set(server_prompts(ui_client))
    drag(frontend, GATED, [0.5, 0.4, 0.3, 0.2])
    assert abs(frontend.widget(GATED, "gamma")["value"] - 0.2) <= 0.02  # the drag did move the slider
    page.mouse.click(*frontend.widget_point(GATED, "gamma", 0.9))  # and a click
    assert abs(frontend.widget(GATED, "gamma")["value"] - 0.9) <= 0.02
    # Nothing to wait for but the time a queue would have taken: a few debounce windows.
    page.wait_for_timeout(4 * DEBOUNCE_S * 1000)
    assert posts == []
    assert new_prompts(ui_client, before) == {}


# --- d) Nodes 2.0 (the Vue renderer): the node must still work, with the plain slider. ---

def test_nodes_2_mode_keeps_the_node_working(browser, ui_server, frontend_version, test_prompt, ui_client):
    frontend = Frontend(browser, ui_server, frontend_version, settings={"Comfy.VueNodes.Enabled": True, **NO_MISSING_MODELS_DIALOG})
    try:
        assert frontend.evaluate("() => LiteGraph.vueNodesMode") is True
        errors = frontend.load_template("flexip_basic")
        node = frontend.page.locator(f'[data-node-id="{GATED}"]')
        node.wait_for(timeout=30_000)
        assert node.locator('[aria-label="gamma"]').count() >= 1
        assert node.locator('[aria-label="live"]').count() >= 1
        assert frontend.widget(GATED, "gamma")["value"] == 0.5
        flexip_errors = [e for e in frontend.errors if "flexip" in e.lower()]
        assert flexip_errors == [], flexip_errors
        assert [e for e in errors if "Failed to load resource" not in e] == []
        assert "live" not in frontend.prompt()["output"][str(GATED)]["inputs"]

        # Live also works through the Vue widgets: the toggle, then one keyboard step of the slider.
        frontend.set_inputs(test_prompt("flexip_basic_api.json"))
        node.locator('[aria-label="live"]').first.click()
        assert frontend.widget(GATED, "live")["value"] is True
        thumb = node.locator('[role="slider"]').first
        with frontend.page.expect_request(is_prompt_post, timeout=5_000) as posted:
            thumb.focus()
            thumb.press("ArrowRight")
        gamma = frontend.widget(GATED, "gamma")["value"]
        assert gamma == pytest.approx(0.51)
        entry = ui_client.wait(posted.value.response().json()["prompt_id"], timeout=600)
        assert entry["prompt"][2][str(GATED)]["inputs"]["gamma"] == gamma
    finally:
        frontend.close()
