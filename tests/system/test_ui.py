"""The page (`vrouter ui`) in a real browser: Debian's headless Chromium driven by Playwright,
on configs/policies.yaml running with unique names. The map shows every node and pod; a new
connection reaches the flow table within 2 s; a policy drop is red with the policy's name; the
trace form names the backend; nothing the cluster says becomes HTML; only GET is served; the
browser's console has no errors. The README's screenshots are made here: set
VROUTER_SCREENSHOTS=tests/system/screenshots to write them there (else into the test's tmp dir)."""
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.system.cluster import child_env
from tests.system.policies_demo import curl
from vrouter.model import config
from vrouter.ops.common import live_cluster

CHROMIUM = "/usr/bin/chromium"
# the machine's closed network refuses Chromium's own background connections: none are made
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
RED = "rgb(198, 40, 40)"   # #c62828, the page's colour for DROPPED


@pytest.fixture(scope="module")
def ui(policies_demo, tmp_path_factory):
    """`vrouter ui CLUSTER --port 0`, and the URL it prints (its logs go to a file)."""
    log = tmp_path_factory.mktemp("ui") / "ui.log"
    with open(log, "w") as errors:
        proc = subprocess.Popen([sys.executable, "-m", "vrouter", "ui", policies_demo.prefix,
                                 "--port", "0"], stdout=subprocess.PIPE, stderr=errors,
                                text=True, env=child_env())
    try:
        line = proc.stdout.readline()
        if not line.startswith(f"vrouter ui: {policies_demo.prefix} on http://127.0.0.1:"):
            proc.terminate()
            pytest.fail(f"vrouter ui did not say where it serves: {line!r}\n{log.read_text()}")
        url = line.split(" on ", 1)[1].split()[0]
        try:
            urllib.request.urlopen(url, timeout=10).close()
        except (OSError, urllib.error.HTTPError) as exc:
            pytest.fail(f"vrouter ui does not serve its page ({exc}):\n{log.read_text()[-3000:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (the README's install)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install playwright (the test extra)")
    with tempfile.TemporaryDirectory(prefix="vrouter-chromium-") as profile, \
            sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 940})
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def page(browser, ui):
    """The page, open once for all tests; every console error and page error is kept."""
    tab = browser.new_page()
    tab.errors = []
    tab.on("console", lambda m: tab.errors.append(f"console: {m.text}")
           if m.type == "error" else None)
    tab.on("pageerror", lambda e: tab.errors.append(f"page error: {e}"))
    tab.goto(ui)
    tab.wait_for_function("() => window.vrouter && window.vrouter.cy && window.vrouter.model")
    yield tab
    tab.close()


def screenshot(page, name: str, tmp_path: Path, selector: str | None = None) -> Path:
    folder = Path(os.environ.get("VROUTER_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    (page.locator(selector) if selector else page).screenshot(path=str(path))
    assert path.stat().st_size > 5000, f"{path} is (nearly) empty"
    return path


def live_pods(cluster) -> set[str]:
    live = live_cluster(config.load(cluster.path, check_host=False))   # the store's pods too
    return {f"pod:{p.namespace}/{p.name}" for p in live.pods}


def test_the_map_shows_every_node_and_pod_of_the_running_cluster(page, policies_demo, tmp_path):
    shown = set(page.evaluate("() => vrouter.cy.nodes(\"[kind = 'pod']\").map(n => n.id())"))
    expected = live_pods(policies_demo)
    assert len(expected) == 6 and shown == expected   # four pods and a DNS server per node
    nodes = page.evaluate("() => vrouter.cy.nodes(\"[kind = 'cnode']\").map(n => n.id())")
    assert sorted(nodes) == ["cnode:node-a", "cnode:node-b"]
    # each pod inside its node's box
    for pod_id in expected:
        parent = page.evaluate(f"() => vrouter.cy.getElementById({pod_id!r}).parent().parent()"
                               ".id()")
        node = next(p.node for p in config.load(policies_demo.path, check_host=False).pods
                    if pod_id.endswith("/" + p.name))
        assert parent == f"cnode:{node}"
    services = page.evaluate("() => vrouter.cy.nodes(\"[kind = 'svc']\").map(n => n.id())")
    assert {"svc:shop/api", "svc:shop/db", "svc:kube-system/kube-dns"} <= set(services)


def test_a_new_connection_appears_in_the_flow_table_within_2_seconds(page, policies_demo):
    frontend, api = policies_demo.pod("frontend"), policies_demo.pod("api")
    assert curl(policies_demo, "frontend", "http://api.shop:8080/") == 0
    page.wait_for_function(
        """([src, dst]) => [...document.querySelectorAll('#flow-rows tr')].some(r =>
               r.dataset.event === 'start' && r.cells[2].textContent.startsWith(src) &&
               r.cells[4].textContent === dst)""",
        arg=[f"shop/{frontend}:", f"shop/{api}:8080"], timeout=2000)   # the bound
    row = page.locator("#flow-rows tr.verdict-TRANSLATED", has_text=f"shop/{api}:8080").first
    assert "Service shop/api port http" in row.inner_text()


def test_a_policy_drop_appears_in_red_with_the_policy_name(page, policies_demo, tmp_path):
    assert curl(policies_demo, "debug", f"http://{policies_demo.ip('api')}:8080/",
                seconds=1) == 28
    row = page.locator("#flow-rows tr.verdict-DROPPED", has_text="shop/api-from-frontend").first
    row.wait_for(timeout=5000)
    assert row.locator("td.verdict").inner_text() == "DROPPED"
    assert row.locator("td.verdict").evaluate("e => getComputedStyle(e).color") == RED
    assert policies_demo.pod("debug") in row.inner_text()
    edge = page.evaluate("""() => vrouter.cy.edges('.dropped').map(e =>
        [e.data('label'), e.style('line-color')])""")
    assert any("shop/api-from-frontend" in label and color.replace(" ", "") == RED.replace(" ", "")
               for label, color in edge), edge
    screenshot(page, "flows", tmp_path, "#flows")


def test_the_trace_form_names_the_backend_and_draws_the_path(page, policies_demo, tmp_path):
    api = policies_demo.pod("api")
    page.select_option("#trace-from", policies_demo.pod("frontend"))
    page.fill("#trace-to", "shop/api:8080")
    page.click("#trace-go")
    page.wait_for_function("() => document.getElementById('trace-output').textContent"
                           ".includes('forward:')", timeout=30000)
    text = page.inner_text("#trace-output")
    assert f"backend {policies_demo.ip('api')}:8080 (pod {api} on node-b)" in text, text
    assert f"-> pod {api}" in text
    traced = set(page.evaluate("() => vrouter.cy.nodes('.traced').map(n => n.id())"))
    assert {f"pod:shop/{policies_demo.pod('frontend')}", "svc:shop/api",
            f"pod:shop/{api}"} <= traced
    screenshot(page, "map", tmp_path)


def test_the_pod_panel_shows_labels_policies_and_services(page, policies_demo):
    api = policies_demo.pod("api")
    page.evaluate(f"() => vrouter.cy.getElementById('pod:shop/{api}').emit('tap')")
    page.wait_for_function(f"() => document.getElementById('pod-panel').dataset.pod === "
                           f"'shop/{api}'")
    panel = page.inner_text("#pod-panel")
    assert "app=api" in panel and policies_demo.ip("api") in panel and "node-b" in panel
    assert "shop/api-from-frontend (Ingress)" in panel and "shop/api 10.96." in panel


def test_the_flow_filter_and_the_namespace_filter(page):
    page.fill("#flow-filter", "verdict:DROPPED")
    page.wait_for_function("() => vrouter.filter.verdict && vrouter.filter.verdict[0] === "
                           "'DROPPED'")
    verdicts = page.eval_on_selector_all("#flow-rows tr td.verdict", "c => c.map(e => "
                                         "e.textContent)")
    assert verdicts and set(verdicts) == {"DROPPED"}
    page.fill("#flow-filter", "verdict:MAYBE")
    page.wait_for_function("() => document.getElementById('flow-filter-error').textContent")
    assert page.inner_text("#flow-filter-error").startswith("verdict: 'MAYBE': one of")
    page.fill("#flow-filter", "")
    page.wait_for_function("() => !vrouter.filter.verdict")
    page.select_option("#ns-filter", "tools")
    hidden = page.evaluate("() => vrouter.cy.nodes(\"[kind = 'pod'].hidden\").map(n => n.id())")
    assert hidden and all(not h.startswith("pod:tools/") for h in hidden)
    page.select_option("#ns-filter", "")


def test_text_from_the_cluster_is_never_html(page):
    hostile = "<img src=x onerror=\"window.pwned=1\">"
    page.evaluate("""h => vrouter.addFlows([{time_ns: Date.now() * 1e6, node_name: h,
        event: 'drop', verdict: 'DROPPED', type: h, Summary: h, protocol: 'tcp', ports: [1],
        IP: {source: '10.0.0.1', destination: '10.0.0.2'},
        source: {namespace: 'x', pod_name: h}, destination: {labels: []}, is_reply: false}])""",
                  hostile)
    assert page.evaluate("() => window.pwned") is None
    assert page.locator("#flow-rows img").count() == 0
    assert hostile in page.inner_text("#flow-rows")


def test_only_get_is_served(ui):
    for path in ("/", "/api/trace", "/events"):
        request = urllib.request.Request(ui.rstrip("/") + path, data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 405
    with urllib.request.urlopen(ui, timeout=10) as answer:
        assert "default-src 'self'" in answer.headers["Content-Security-Policy"]


def test_the_console_has_no_errors(page):
    """(Last: after everything above ran in the page.)"""
    assert page.errors == []
