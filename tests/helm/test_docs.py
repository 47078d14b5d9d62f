"""Documentation stays in step with the chart: every value is described in values.yaml (a
`# --` comment) and listed in README.md, and docs/deploy.md covers the install paths."""

from __future__ import annotations

import re

import yaml


def documented_keys(text: str) -> dict[str, str]:
    """Dotted key -> description, for every key preceded by a `# --` comment in values.yaml."""
    out, stack, pending = {}, [], None
    for line in text.splitlines():
        if not line.strip():
            continue
        comment = re.match(r"^\s*#\s?(--\s?)?(.*)$", line)
        if comment:
            if comment.group(1):
                pending = [comment.group(2)]
            elif pending is not None:
                pending.append(comment.group(2))
            continue
        key = re.match(r"^(\s*)([A-Za-z0-9_]+):", line)
        if not key:
            continue
        indent = len(key.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key.group(2)))
        if pending is not None:
            out[".".join(k for _, k in stack)] = " ".join(pending).strip()
            pending = None
    return out


def leaves(node, prefix=""):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def test_every_value_is_described_and_in_the_readme(k8s):
    text = (k8s.CHART / "values.yaml").read_text()
    documented = documented_keys(text)
    values = yaml.safe_load(text)
    undocumented = [leaf for leaf in leaves(values)
                    if not any(leaf == key or leaf.startswith(key + ".") for key in documented)]
    assert not undocumented, f"values without a `# --` description: {undocumented}"
    readme = (k8s.CHART / "README.md").read_text()
    missing = [key for key in documented if f"`{key}`" not in readme]
    assert not missing, f"values missing from helm/saguaro/README.md: {missing}"
    assert all(description for description in documented.values())


def test_readme_lists_no_stale_values(k8s):
    documented = documented_keys((k8s.CHART / "values.yaml").read_text())
    readme = (k8s.CHART / "README.md").read_text()
    rows = re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", readme, flags=re.M)
    assert rows and set(rows) <= set(documented), set(rows) - set(documented)


def test_deploy_guide_covers_the_install_paths(k8s):
    guide = (k8s.REPO / "docs" / "deploy.md").read_text()
    for topic in ("helm install", "helm upgrade", "colocated", "remote", "tensor", "KEDA", "PodMonitor",
                  "OTEL_EXPORTER_OTLP_ENDPOINT", "initContainers", "docker build"):
        assert topic in guide, topic
    for example in sorted((k8s.CHART / "examples").glob("*.yaml")):
        assert f"examples/{example.name}" in guide, example.name
