"""Fix review findings in a workspace by rewriting syntax trees (libcst) and running ruff.

``apply_fixes`` takes the reviewer's findings (``Issue`` objects with rule ids
such as ``bandit:B506`` or ``ruff:F401``) and rewrites, file by file, the code
each one points at. Every rewrite is a pure text -> text function over a libcst
tree, so comments and formatting elsewhere are kept. The rewrites:

- B506 ``yaml.load(s, Loader=...)`` -> ``yaml.safe_load(s)``
- B602/B604 ``subprocess.*(<literal or f-string>, shell=True)`` -> an argument
  list (split with shlex at fix time) and ``shell=False``; only when no shell
  syntax (pipes, redirection, variables, globs, builtins) is involved
- B113 ``requests.*`` / ``httpx.*`` without ``timeout=`` -> ``timeout=10``
- B324/B303 md5/sha1: password data -> ``hashlib.scrypt(data, salt=b"<module>",
  n=2**14, r=8, p=1)``; a token that must be unpredictable (reset, session,
  nonce...) -> ``secrets.token_hex(n)`` of the same length; any other or unknown
  use -> ``hashlib.sha256``; a cache key / ETag / checksum -> disputed (concern
  ``performance``), or ``usedforsecurity=False`` once the policy puts it in
  ``must_fix``. A column too narrow for a longer digest is a follow-up.
- B105/B106 hard-coded secret (name, attribute, ``app.config["KEY"]``, keyword)
  -> ``os.environ["<PLACE>_<NAME>"]``, one variable per distinct secret
  (``envnames``), listed in ``FixOutcome.configure``; when the tests need a
  value without configuration, ``os.environ.get(...) or secrets.token_urlsafe(32)``
- B201 ``app.run(debug=True)`` -> ``debug=False``
- B311 ``random`` -> ``secrets`` (choice, randbelow, randbits, SystemRandom)
- ruff findings -> ``ruff check --fix --isolated --select <code>``

Diffs are minimal: no reformatting, and each file keeps its encoding and line
endings (CRLF stays CRLF).

``verify`` ("run the tests", from the developer) gates every change: a file's
fixes are first tried together; when the tests break, each fix is retried on
its own and one that still breaks tests is reverted, reported as refused and
disputed with concern ``correctness`` (unless the policy ruled it ``must_fix``).
Waived findings are left alone.

Layout: ``apply`` (the driver and refusal loop), ``model`` (outcome, plan, line
mapping), ``tree`` (libcst helpers), ``calls`` (yaml / requests / debug),
``shell``, ``hashing``, ``secrets_random``, ``envnames`` (secret -> variable
name), ``columns`` (fixed-width hash columns), ``lint`` (ruff) and ``rules``
(the rule -> rewrite table).
"""

from shared.tools.fixes.apply import apply_fixes
from shared.tools.fixes.model import FixOutcome, Verify, rule_code
from shared.tools.fixes.rules import SUPPORTED_RULES

__all__ = ["FixOutcome", "Verify", "apply_fixes", "rule_code", "SUPPORTED_RULES"]
