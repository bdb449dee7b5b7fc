# Two commands: `make serve` and `make test`. Each sets up whatever is missing first:
# Debian packages, uv, the server's .venv and the sandbox runtime (.runtime).
# Downloads are cached outside the clone (uv's cache), so a fresh clone sets up in minutes.

SHELL := /bin/bash
PYTHON ?= python3
UV := $(PYTHON) -m uv
RUNTIME_PYTHON := /usr/bin/python3.11
PYTEST_ARGS ?=

.PHONY: serve test lint bench setup system browser uv venv ray verl-client runtime toolchains node-e2e screenshot lock clean

serve: setup
	.venv/bin/tci serve

# Sessions fork from a template by default; the sandbox's own tests run again on the other
# start path (bubblewrap), which stays supported: same confinement, either way.
BWRAP_TESTS := tests/security tests/integration/test_sandbox.py tests/integration/test_seccomp.py \
	tests/integration/test_cgroups.py tests/integration/test_lifecycle.py

test: setup ray browser node-e2e verl-client
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy src/tci
	.venv/bin/pytest $(PYTEST_ARGS)
	TCI_SANDBOX_START=bwrap .venv/bin/pytest $(PYTEST_ARGS) $(BWRAP_TESTS)

lint: venv
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy src/tci

# Benchmarks of tci and its peers, side by side: prints a table, rewrites docs/benchmarks.md.
bench: setup ray
	.venv/bin/python -m bench

setup: system venv runtime toolchains

# Debian packages the sandbox needs, installed only where missing (PostgreSQL: for the tests of
# TCI_DATABASE_URL, which start their own server from its binaries; tests/pg.py).
system:
	@missing=""; \
	command -v bwrap >/dev/null || missing="$$missing bubblewrap"; \
	command -v slirp4netns >/dev/null || missing="$$missing slirp4netns"; \
	[ -x $(RUNTIME_PYTHON) ] || missing="$$missing python3.11"; \
	command -v setpriv >/dev/null || missing="$$missing util-linux"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v nft >/dev/null || missing="$$missing nftables"; \
	ldconfig -p | grep -q libseccomp.so.2 || missing="$$missing libseccomp2"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# Toolchains of the languages runs offer besides Python (src/tci/runs/languages.py): Debian's,
# installed only where missing; then, into the runtime the sandboxes see read-only
# (.runtime/site/tci-languages, at /usr/local/lib/python3.11/dist-packages/tci-languages):
# Node's packages from runtime/node's lock (npm's cache is outside the clone) and a precompiled
# <bits/stdc++.h> for g++ -std=c++17 -O2. A language still missing is reported at start.
LANGUAGES_DIR := .runtime/site/tci-languages
toolchains: $(LANGUAGES_DIR)/.stamp
$(LANGUAGES_DIR)/.stamp: runtime/node/package-lock.json .runtime/.stamp
	@missing=""; \
	command -v g++ >/dev/null || missing="$$missing g++"; \
	command -v javac >/dev/null || missing="$$missing openjdk-17-jdk-headless"; \
	[ -f /usr/share/java/javatuples.jar ] || missing="$$missing libjavatuples-java"; \
	command -v go >/dev/null || missing="$$missing golang-go"; \
	[ -x /usr/bin/rustc ] || missing="$$missing rustc"; \
	[ -x /usr/bin/node ] || missing="$$missing nodejs npm"; \
	command -v Rscript >/dev/null || missing="$$missing r-base-core"; \
	command -v ruby >/dev/null || missing="$$missing ruby"; \
	command -v lua5.4 >/dev/null || missing="$$missing lua5.4"; \
	command -v php >/dev/null || missing="$$missing php-cli"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	rm -rf $(LANGUAGES_DIR).new && mkdir -p $(LANGUAGES_DIR).new/pch/bits
	cp runtime/node/package.json runtime/node/package-lock.json $(LANGUAGES_DIR).new/
	cd $(LANGUAGES_DIR).new && npm ci --omit=dev --no-audit --no-fund --prefer-offline --loglevel=error
	g++ -std=c++17 -O2 -x c++-header \
		$$(echo '#include <bits/stdc++.h>' | g++ -std=c++17 -H -E -x c++ - 2>&1 >/dev/null | grep -m1 'bits/stdc++.h' | sed 's/^\.* //') \
		-o $(LANGUAGES_DIR).new/pch/bits/stdc++.h.gch
	# javac's own classes in a class-data archive (the JDK's covers only java.base's): about
	# half of a compile's CPU at start-up; the JVM ignores it if the JDK changes.
	mkdir -p $(LANGUAGES_DIR).new/java/probe
	printf 'public class Main{public static void main(String[] a){System.out.println(1);}}\n' \
		> $(LANGUAGES_DIR).new/java/probe/Main.java
	javac -J-XX:+UseSerialGC -J-XX:TieredStopAtLevel=1 \
		-J-XX:ArchiveClassesAtExit=$(LANGUAGES_DIR).new/java/javac.jsa \
		-d $(LANGUAGES_DIR).new/java/probe $(LANGUAGES_DIR).new/java/probe/Main.java 2>/dev/null
	rm -rf $(LANGUAGES_DIR).new/java/probe
	chmod -R a+rX $(LANGUAGES_DIR).new
	rm -rf $(LANGUAGES_DIR) && mv $(LANGUAGES_DIR).new $(LANGUAGES_DIR)
	touch $@

# Debian's Chromium for the console's browser tests (tests/browser, driven by Playwright with
# executable_path: Playwright's own browser download is never used).
browser:
	@command -v chromium >/dev/null || { echo "installing Debian package: chromium"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# docs/console.png: the web console on a session with a plot (tests/browser/screenshot.py).
screenshot: setup browser
	.venv/bin/python -m tests.browser.screenshot docs/console.png

uv:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q uv

venv: .venv/.stamp
.venv/.stamp: pyproject.toml requirements.lock | uv
	$(UV) venv -q --allow-existing --python 3.11 .venv
	$(UV) pip install -q --python .venv/bin/python -r requirements.lock
	$(UV) pip install -q --python .venv/bin/python --no-deps -e .
	touch $@

# The sandbox runtime: every package TCI pre-installs, for Debian's Python 3.11, which the
# sandboxes see read-only at /usr/local/lib/python3.11/dist-packages. Compiled to bytecode
# here: a sandbox cannot write __pycache__, so without it every import of a package the
# template did not preload compiles its source again, in every session and run (`import
# sklearn.linear_model`: 5.8 s of CPU from source, 2.0 s from bytecode).
runtime: .runtime/.stamp
.runtime/.stamp: runtime/requirements.lock | uv system
	rm -rf .runtime.new
	$(UV) pip install -q --compile-bytecode --python $(RUNTIME_PYTHON) --target .runtime.new/site -r runtime/requirements.lock
	ln -sf $(RUNTIME_PYTHON) .runtime.new/site/bin/python
	ln -sf $(RUNTIME_PYTHON) .runtime.new/site/bin/python3
	chmod -R a+rX .runtime.new src/tci/worker
	rm -rf .runtime && mv .runtime.new .runtime
	touch $@

# The official TypeScript SDK for tests/e2e (pinned by its package-lock.json), installed only
# when missing or when the lock changes; npm's download cache (~/.npm) is outside the clone.
node-e2e: tests/e2e/ts/node_modules/.stamp
tests/e2e/ts/node_modules/.stamp: tests/e2e/ts/package-lock.json
	cd tests/e2e/ts && npm ci --no-audit --no-fund --prefer-offline
	touch $@

# Ray, for the multi-node tests and gateways (tci serve --ray-address, tci/cluster): an optional
# extra, kept out of requirements.lock so a single-machine install never has it; uv caches it.
ray: .venv/.ray-stamp
.venv/.ray-stamp: .venv/.stamp
	$(UV) pip install -q --python .venv/bin/python -e '.[ray]'
	touch $@

# verl's SandboxFusion reward client, for tests/integration/test_sandboxfusion.py: the wheel
# without its dependencies (torch, ray...); the test loads that one file, which needs requests.
VERL_VERSION := 0.9.1
verl-client: .venv/.verl-stamp
.venv/.verl-stamp: .venv/.stamp
	$(UV) pip install -q --python .venv/bin/python --no-deps verl==$(VERL_VERSION)
	touch $@

lock: uv
	$(UV) pip compile -q pyproject.toml --extra dev --extra bench --python-version 3.11 -o requirements.lock
	$(UV) pip compile -q runtime/requirements.in --python $(RUNTIME_PYTHON) -o runtime/requirements.lock

clean:
	rm -rf .venv .runtime .runtime.new .pytest_cache .ruff_cache .mypy_cache tests/e2e/ts/node_modules
