"""Write a1111_cases.py: the case inputs below, with the outputs of AUTOMATIC1111's own functions.

Not a test. AUTOMATIC1111's code is AGPL and needs lark, so it never enters this repository: fetch
modules/prompt_parser.py of AUTOMATIC1111/stable-diffusion-webui (the tables were made from commit
28bd8e142d5f77b71ae8d7d7140b5da1b3a49906) to a scratch folder, `pip install lark==1.1.2 torch`
(1.1.2 is the lark AUTOMATIC1111 pins), then run

    python tests/prompts/regenerate.py /tmp/prompt_parser.py > tests/prompts/a1111_cases.py
"""

from __future__ import annotations

import importlib.util
import pprint
import sys

ATTENTION = [
    # AUTOMATIC1111's docstring examples
    "normal text", "an (important) word", "(unbalanced", "\\(literal\\]", "(unnecessary)(parens)",
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    # the example and everyday prompts
    "a (red:1.3) car, [blurry], ((masterpiece))", "masterpiece, best quality, (photorealistic:1.4), 1girl",
    "(worst quality, low quality:1.4), lowres, bad anatomy", "[[[faded]]], (sharp focus)",
    # emphasis and nesting
    "(a)", "[a]", "((a))", "[[a]]", "([a])", "[(a)]", "(((((a)))))", "[[[[[a]]]]]", "(a (b (c)))",
    "[a [b [c]]]", "(a [b] c)", "[a (b) c]", "(a)(b)", "(a) (b)", "(a)[b]", "x (a) y [b] z",
    # explicit weights and their number forms
    "(a:1.5)", "(a:0.5)", "(a:1.)", "(a:.5)", "(a:-1)", "(a:+2)", "(a:0)", "(a:2)", "(a: 1.5)",
    "(a:1.5 )", "(a : 1.5)", "(a:\t1.2\n)", "((a:1.5))", "((a:1.5):1.2)", "[(a:1.5)]", "(a:1.5) (b:1.5)",
    "(a:1.5)(b:1.5)", "(a:1.1)", "((a))(b:1.21)", "(a:1.5:2)", "(a:b:1.5)", "(a:1.5", "a:1.5)",
    "(a:1.5]", "[a:1.5]", "(a:1e5)", "(a:b)", "(a:)", "(:1.5)", "(a::1.5)", "(a:1,5)", "(a:5%)",
    "(a:00001.5000)", "(a:1.23456789)", "(a:٣)", "(a:١.٥)",
    # unbalanced brackets close at the end, stray closers are text
    "(a", "((a", "[a", "[[a", "(a [b", "[a (b", "a)", "a]", "a))", "(a))", "[a]]", "(a]", "[a)",
    ")(", "][", "(", ")", "[", "]", ":", "((((", "]]]]", "(a)b)", "([a)]", "a (b c", "a [b c",
    # escapes
    "\\(a\\)", "\\[a\\]", "\\\\", "a\\\\b", "\\a", "a\\", "\\", "(\\(a\\))", "\\((a)", "(a\\)", "[a\\]",
    "\\(a:1.5\\)", "(a\\:1.5)", "\\\\(a)", "\\\\\\(a)",
    # BREAK
    "a BREAK b", "BREAK", "BREAK a", "a BREAK", "a BREAK BREAK b", "aBREAKb", "a break b", "a BREAKb",
    "(a BREAK b)", "(a BREAK b:1.5)", "[a BREAK b]", "a\nBREAK\nb", "a  BREAK  b", "a, BREAK, b",
    "BREAK BREAK", "(BREAK)", "a (b) BREAK (c)", "Break BREAK_ BREAK",
    # unicode and whitespace
    "(café:1.2) naïve", "(猫:1.3), 犬", "[ünïcødé]", "(emoji 🙂:0.9)", "  ", "", "\t(a)\n",
    # scheduling syntax reaches parse_prompt_attention as text
    "[a:b:0.5]", "[a|b]", "a <lora:foo:0.5> b",
]

SCHEDULE_STEPS = [10, 20, 1, 7]
SCHEDULE = [
    # AUTOMATIC1111's docstring examples (steps = 10)
    "test", "a [b:3]", "a [b: 3]", "a [[[b]]:2]", "[(a:2):3]", "a [b : c : 1] d", "a[b:[c:d:2]:1]e",
    "a [unbalanced", "a [b:.5] c", "a [{b|d{:.5] c", "((a][:b:c [d:3]", "[a|(b:1.1)]", "[fe|]male",
    "[fe|||]male",
    # the README-style example and everyday edits
    "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
    "[ in background:0.25] [shoddy:masterful:0.5]",
    "a [cat:dog:0.4]", "a [cat:dog:5]", "[dog:5] running", "[cat::5] sitting",
    "a [cat|dog] and a [mouse|rat|bird]",
    # when: integers, decimals, signs, exponents, rounding and capping
    "[a:b:0]", "[a:b:1]", "[a:b:10]", "[a:b:11]", "[a:b:100]", "[a:b:-1]", "[a:b:+3]", "[a:b:0.05]",
    "[a:b:0.1]", "[a:b:0.3]", "[a:b:0.7]", "[a:b:0.99]", "[a:b:1.0]", "[a:b:1.5]", "[a:b:3.]", "[a:b:.25]",
    "[a:b:1e1]", "[a:b:1e-1]", "[a:b:2.5e-1]", "[a:b:0.333]", "[a:b:-0.5]",
    # spaces around when
    "[a:b: 3 ]", "[a:b:3 ]", "[a:b :3]", "[ a : b : 3 ]", "[a:b:\n3]",
    # forms that are not edits stay as text
    "[a:b:c]", "[a:b:c:3]", "[a:b:3", "a:b:3]", "[a:b:3x]", "[a:b:x3]", "[a:b:]", "[a:b:.]", "[:3]",
    "[a:b:٣]", "[:b:3]", "[a::3]", "[::3]",
    # nesting
    "[[a:b:3]:c:5]", "[a:[b:c:3]:5]", "[a:[b:3]:5]", "[[a:3]", "[a [b:3]", "[(a:b):3]",
    "(a[b:3])", "[a:(b:3)]", "(a:[b:3])", "((a:[b:c:2]):1.2)", "[[a|b]:c:4]", "[a:[b|c]:4]",
    # alternation
    "[a|b]", "[a|b|c]", "[a||b]", "[|]", "[a|b|]", "[|a]", "[a|[b|c]]", "([a|b])", "[a|b][c|d]",
    "[a:b:3][c|d]", "[(a:1.2)|b]", "[a|b:3]", "[a:b|c:3]", "[a|b", "a|b", "(a|b)", "[a:b:3]|",
    # escapes and stray characters
    "x\\[a:3]", "[a\\:b:3]", "a\\", "\\[a|b\\]", "[a\\|b]", "a\\\nb", "[a:b:3] \\(c\\)",
    # unicode, empty, whitespace
    "", " ", "[猫:犬:0.5]", "[café|thé]", "\t[a:b:2]\n",
]

def main(path: str) -> None:
    spec = importlib.util.spec_from_file_location("a1111_prompt_parser", path)
    a1111 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(a1111)
    attention = [(text, [tuple(piece) for piece in a1111.parse_prompt_attention(text)]) for text in ATTENTION]
    schedule = []
    for steps in SCHEDULE_STEPS:
        for old in (False, True):
            for text in SCHEDULE:
                got = a1111.get_learned_conditioning_prompt_schedules([text], steps, use_old_scheduling=old)
                schedule.append((text, steps, old, [tuple(entry) for entry in got[0]]))
    print("# ruff: noqa: E501")
    print('"""Outputs of AUTOMATIC1111\'s own functions; written by regenerate.py, do not edit."""\n')
    print("# (prompt, [(text, weight), ...]) from parse_prompt_attention")
    print("ATTENTION = " + pprint.pformat(attention, width=110))
    print("\n# (prompt, steps, use_old_scheduling, [(end step, text), ...])")
    print("# from get_learned_conditioning_prompt_schedules")
    print("SCHEDULE = " + pprint.pformat(schedule, width=110))


if __name__ == "__main__":
    main(sys.argv[1])
