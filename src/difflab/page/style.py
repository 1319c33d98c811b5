"""The page's stylesheet (inlined into its <style>: the page is one file)."""

CSS = """
:root { --fg:#1d2330; --muted:#667085; --line:#d9dde5; --accent:#2957a4; --bg:#fff; --soft:#f5f7fa; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font: 15px/1.55 -apple-system, "Segoe UI", "DejaVu Sans", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 32px 80px; }
header h1 { font-size: 28px; margin: 0 0 6px; letter-spacing: -0.01em; }
ul.runs { margin: 0 0 18px; padding-left: 18px; color: var(--muted); }
h2 { font-size: 22px; margin: 38px 0 10px; padding-bottom: 6px; border-bottom: 2px solid var(--fg); }
h2.part { margin-top: 56px; }
h3 { font-size: 18px; margin: 34px 0 6px; color: var(--accent); }
h4 { font-size: 15px; margin: 20px 0 8px; }
p { max-width: 880px; }
a { color: var(--accent); }
code { font-size: 12.5px; background: var(--soft); padding: 1px 4px; border-radius: 3px; }
nav.toc { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 6px 22px 12px; }
nav.toc h2 { border: 0; font-size: 16px; margin: 10px 0 4px; }
nav.toc ol { margin: 2px 0; padding-left: 20px; } nav.toc > ol { columns: 2; column-gap: 40px; }
nav.toc > ol > li { break-inside: avoid; margin-bottom: 6px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 12px; text-align: left; vertical-align: top; }
thead th { background: var(--soft); font-weight: 600; }
tbody th { font-weight: 500; color: var(--muted); }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.digits td { min-width: 56px; }
.ratio { color: var(--muted); font-size: 12.5px; }
.reused { background: #fff3cd; color: #7a5a00; padding: 0 6px; border-radius: 3px; font-size: 12.5px; }
.bad { background: #fde2e1; color: #9b1c1c; padding: 0 6px; border-radius: 3px; }
.missing { color: var(--muted); font-style: italic; }
.figure { margin: 14px 0 24px; }
.row { display: grid; gap: 18px; align-items: start; }
.row.cols-1 { grid-template-columns: 1fr; } .row.cols-2 { grid-template-columns: 1fr 1fr; }
.row.cols-3 { grid-template-columns: 1fr 1fr 1fr; }
figure.cell { margin: 0; padding: 10px 12px; border: 1px solid var(--line); border-radius: 6px; background: #fff; }
.runlabel { font-weight: 600; font-size: 13px; margin-bottom: 6px; color: var(--accent); }
.pics { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-end; }
.pic { display: flex; flex-direction: column; align-items: flex-start; max-width: 100%; }
.pic .sub { font-size: 12.5px; color: var(--muted); margin-bottom: 2px; }
.pic img { max-width: 100%; height: auto; display: block; }
.pic.wide { max-width: 100%; overflow-x: auto; padding-bottom: 4px; }
.pic.wide img { max-width: none; }
img.px { image-rendering: pixelated; }
img.framed { border: 1px solid #475467; background: #98a2b3; padding: 6px; }
.pic a.full { display: block; cursor: zoom-in; }
.pic .fulllink { margin-top: 2px; order: 2; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 8px; }
"""
