"""`specdec bench`: `protocol` (prompts, runs, statistics; `suite.jsonl` the built-in prompts),
`result` (the JSON schema as dataclasses), `report` (table, plot, the command's run), and the
synthetic bench at real sizes: `synthetic` (random-weight bundles, the oracle drafter),
`synthetic_run` (costs, host wait, ideal speed-up) and `synthetic_report`."""
