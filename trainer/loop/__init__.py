"""The whole journey as one command: `demo` (train v1, archive, serve, score every domain) and
`loop` (drift alarm -> labels -> adapt -> archive -> gated rollout, step after step). May import
every other trainer layer."""
