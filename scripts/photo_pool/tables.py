"""The pool in numbers: the summary printed after a fetch and docs/data.md's markdown tables (``--markdown``)."""

from __future__ import annotations

from pathlib import Path

from photo_pool.rules import PRESCALE, load_rules


def mpixel(rows: list[dict]) -> float:
    """Mpixel after each photo's prescale: what training sees."""
    return sum(int(r["width"]) * int(r["height"]) / float(r.get("prescale") or PRESCALE) ** 2 for r in rows) / 1e6


def totals(rows: list[dict], key: str) -> list[tuple[str, list[dict], list[dict]]]:
    """(value of ``key``, its train rows, its valid rows) in the rules' package or tag order."""
    rules = load_rules()
    order = list(rules.packages) if key == "package" else list(rules.tag_names)
    values = sorted({r[key] for r in rows}, key=lambda v: (order.index(v) if v in order else len(order), v))
    return [(v, [r for r in rows if r[key] == v and r["split"] == "train"],
             [r for r in rows if r[key] == v and r["split"] == "valid"]) for v in values]


def summarise(rows: list[dict], excluded: list[dict], images: Path, seconds: float) -> None:
    def megabytes(mine: list[dict]) -> float:
        return sum((images / r["file"]).stat().st_size for r in mine if (images / r["file"]).is_file()) / 1e6

    print(f"{'package':26s} {'train':>5s} {'valid':>5s} {'Mpx*':>6s} {'MB':>6s}  sizes (w x h)")
    for package, train, valid in totals(rows, "package"):
        mine = train + valid
        sizes = [int(r["width"]) * int(r["height"]) for r in mine]
        small, large = mine[sizes.index(min(sizes))], mine[sizes.index(max(sizes))]
        print(f"{package:26s} {len(train):5d} {len(valid):5d} {mpixel(mine):6.1f} {megabytes(mine):6.1f}  "
              f"{small['width']}x{small['height']} .. {large['width']}x{large['height']}")
    train = [r for r in rows if r["split"] == "train"]
    print(f"{'total':26s} {len(train):5d} {len(rows) - len(train):5d} {mpixel(rows):6.1f} {megabytes(rows):6.1f}  "
          f"in {seconds:.1f} s")
    print(f"* Mpixel after the prescale; training: {len(train)} photos, {mpixel(train):.1f} Mpixel. "
          f"{len(excluded)} candidates left out (EXCLUDED.tsv)")
    print(f"valid split: {', '.join(sorted(r['file'] for r in rows if r['split'] == 'valid'))}")


def markdown(rows: list[dict]) -> str:
    """docs/data.md's tables (the photo pool), generated from the manifest."""
    lines = ["| package | version | train | valid | Mpixel (train, after prescale) | licence (copyright file) |",
             "|---|---|---:|---:|---:|---|"]
    for package, train, valid in totals(rows, "package"):
        licences = ", ".join(f"{name} ({count})" if count > 1 else name for name, count in sorted(
            {r["licence"]: sum(x["licence"] == r["licence"] for x in train + valid) for r in train + valid}.items()))
        version = (train + valid)[0]["package_version"]
        lines.append(f"| `{package}` | {version} | {len(train)} | {len(valid)} | {mpixel(train):.1f} | {licences} |")
    train = [r for r in rows if r["split"] == "train"]
    lines.append(f"| **total** | | **{len(train)}** | **{len(rows) - len(train)}** | **{mpixel(train):.1f}** | |")
    lines += ["", "| tag | train | valid | Mpixel (train) |", "|---|---:|---:|---:|"]
    for tag, tag_train, tag_valid in totals(rows, "tag"):
        lines.append(f"| {tag} | {len(tag_train)} | {len(tag_valid)} | {mpixel(tag_train):.1f} |")
    return "\n".join(lines)
