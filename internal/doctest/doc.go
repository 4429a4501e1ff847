// Package doctest runs the command blocks of the project's Markdown pages as a
// reader would paste them, so a page that no longer works fails `make test`.
//
// A page is split into sections at each "## " heading; every section runs in
// a fresh bash (see Session) so it cannot lean on a variable an earlier
// section set. Blocks are read by their info string:
//
//   - sh, bash, shell: a script, run as one chunk under `set -e`; every
//     command must succeed and the output is not compared.
//   - console: "$ " starts a command (a trailing backslash continues it, a
//     heredoc's body follows it); the lines after it, up to the next "$ ",
//     are its expected output. A line "..." matches any number of lines and
//     "..." inside a line matches any text. A command whose line carries a
//     comment starting "# fails" must exit non-zero; any other must exit 0.
//   - anything else (hcl, json, go, text) is shown, not run.
//
// The HTML comment `<!-- doctest: skip: <reason> -->` on the line before a
// block skips it; the reason is required, so every skip says why.
package doctest
