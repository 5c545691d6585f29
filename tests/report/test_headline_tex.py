"""summary/headline.tex: every LaTeX special character of a cell, header or caption is escaped once
(an escape's own braces are not escaped again: ``a\\b`` is ``a\\textbackslash b``, never
``a\\textbackslash\\{\\}b``), and the table compiles as booktabs rows."""
import pandas as pd

from mmie.report.results_page import _tex, latex


def test_backslash_is_escaped_once():
    assert _tex("a\\b") == r"a\textbackslash b"
    assert _tex("{x}_1 & 50% #2 $3 ~^") == r"\{x\}\_1 \& 50\% \#2 \$3 \textasciitilde \textasciicircum "


def test_table_cells_headers_and_caption_are_escaped():
    table = pd.DataFrame({"arm": ["lora\\v2", "sae_gate"], "forget:target_rate": ["0.10 [0.05, 0.20]", "5%"]})
    tex = latex(table, "Headline & more_of it")
    assert r"lora\textbackslash v2 & 0.10 [0.05, 0.20] \\" in tex
    assert r"sae\_gate & 5\% \\" in tex
    assert r"arm & forget:target\_rate \\" in tex
    assert r"\caption{Headline \& more\_of it}" in tex
    assert "textbackslash{}" not in tex and r"\{\}" not in tex
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
