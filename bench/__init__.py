"""aiserver's benchmarks against its peers (issue 10). Run them with `hatch run bench:all`."""
