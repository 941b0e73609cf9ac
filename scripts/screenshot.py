"""Screenshot an HTML page (or one element of it) in the system's headless Chromium, for the docs.

    .venv/bin/python scripts/screenshot.py demo-output/eval/report.html docs/report-heatmaps.png --selector "#heatmaps"

Playwright drives the Debian `chromium` binary (`make chromium`); Playwright's own browser download does not
work offline. With `--selector`, the picture spans from that element down to the next element of the same tag
name (a report section is an <h2> and what follows it), or to the end of the page.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no system Chromium found: `make chromium` installs the Debian package")


# The section's box: from the element's top to the next sibling with the same tag (or the page's end).
_SECTION_BOX = """
(sel) => {
  const start = document.querySelector(sel);
  if (!start) return null;
  let end = start.nextElementSibling;
  while (end && end.tagName !== start.tagName) end = end.nextElementSibling;
  const top = start.getBoundingClientRect().top + window.scrollY;
  const bottom = end ? end.getBoundingClientRect().top + window.scrollY : document.body.scrollHeight;
  return {x: 0, y: top, width: document.documentElement.clientWidth, height: bottom - top};
}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path, help="HTML file")
    ap.add_argument("png", type=Path, help="screenshot to write")
    ap.add_argument("--selector", default=None, help="CSS selector of the section to capture (default: whole page)")
    ap.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels (a laptop screen)")
    ap.add_argument("--max-height", type=int, default=2400, help="crop the picture to this many CSS pixels")
    args = ap.parse_args(argv)

    from playwright.sync_api import sync_playwright

    if not args.page.is_file():
        raise SystemExit(f"{args.page}: no such file")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_binary(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": args.width, "height": 900})
        page.goto(args.page.resolve().as_uri())
        page.wait_for_load_state("load")
        clip = None
        if args.selector:
            clip = page.evaluate(_SECTION_BOX, args.selector)
            if clip is None:
                raise SystemExit(f"{args.page}: nothing matches {args.selector!r}")
            clip["height"] = min(clip["height"], args.max_height)
        args.png.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.png), full_page=True, clip=clip)
        browser.close()
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
