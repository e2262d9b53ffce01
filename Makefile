# Builds the probe object and runs the project. `make help` lists targets.
# The CPU the probe is for, as the kernel names it (x86, arm64): this host's,
# or another with `make probe ARCH=arm64` (and `make deb ARCH=arm64`).
HOST_ARCH := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')
ARCH := $(HOST_ARCH)
CROSS := $(filter-out $(HOST_ARCH),$(ARCH))
CLANG ?= clang
PYTHON ?= /usr/bin/python3
VENV := .venv

# -g: BTF for CO-RE relocations and map definitions.  -O2: the verifier needs
# optimized code.  -D__TARGET_ARCH: the register names in bpf_tracing.h.
# -ffile-prefix-map: no build directory in the object (reproducible builds).
BPF_CFLAGS := -g -O2 -target bpf -D__TARGET_ARCH_$(ARCH) -Wall -Werror \
	-ffile-prefix-map=$(CURDIR)/=

.PHONY: probe setup run test bench deb clean help
# This host's probe sits beside the loader; another CPU's in build/$(ARCH)/.
PROBE := $(if $(CROSS),build/$(ARCH),plugin)/tcpdrop.bpf.o
probe: $(PROBE)

$(PROBE): plugin/tcpdrop.c plugin/tcpdrop.h plugin/kernel.h
	@mkdir -p $(@D)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

clean:
	rm -rf plugin/tcpdrop.bpf.o $(VENV) build *.egg-info

# apt-get install only what is missing of a list of Debian packages.
apt_install = @if dpkg-query -W -f='$${Status}\n' $(1) 2>&1 | grep -qv 'install ok installed'; then \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	apt-get install -y -qq --no-install-recommends $(1); fi

# What the monitor needs on a Debian 12 or 13 host: the probe's build, a
# Python venv, and bcc only where the kernel has no BTF (the CO-RE probe's).
RUN_PACKAGES := clang llvm libbpf-dev libbpf1 make pkg-config libc6-dev \
	python3 python3-venv python3-setuptools python3-wheel \
	$(if $(wildcard /sys/kernel/btf/vmlinux),,python3-bpfcc)
# What the tests add: the peers they run (servers, runtimes, capture tools),
# which a host that only wants `make run` should not get (Debian starts an
# InfluxDB without authentication; Docker rewrites the firewall).
TEST_PACKAGES := bpftool nftables iproute2 util-linux procps podman runc docker.io \
	tcpdump tshark tmux python3-matplotlib victoria-metrics influxdb systemd debootstrap \
	python3-bpfcc python3-pytest python3-pytest-random-order python3-hypothesis
INSTALLED := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.test-installed

# A venv on Debian's python3 that sees its packages (python3-bpfcc lives
# there), with this project installed editable.
$(INSTALLED): pyproject.toml setup.py
	$(call apt_install,$(RUN_PACKAGES))
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(VENV)/bin/pip install -q --no-build-isolation -e .
	touch $@

# The tests' peers, and the dashboards' generator (dashboards/generate.py).
$(TEST_INSTALLED): $(INSTALLED)
	$(call apt_install,$(TEST_PACKAGES))
	$(VENV)/bin/pip install -q --no-build-isolation -e '.[dashboards]'
	touch $@

setup: $(INSTALLED) probe

run: setup
	$(VENV)/bin/telegraf-tcpdrop trace

test: setup $(TEST_INSTALLED)
	$(VENV)/bin/python -m pytest -v $(PYTEST_ARGS)

# The benchmark (bench/run.py: ~15 min, then docs/performance.md and its plots).
BENCH_PACKAGES := bpftrace bpfcc-tools python3-matplotlib libc6-dev

bench: setup $(TEST_INSTALLED)
	$(call apt_install,$(BENCH_PACKAGES))
	$(VENV)/bin/python bench/run.py
	$(VENV)/bin/python bench/report.py

help:
	@echo "make run    install what is missing, build the probe, start the tracer"
	@echo "make test   the same set-up, then the test suite (root: it loads the probe)"
	@echo "make bench  the benchmark: drop storms, each monitor's cost -> docs/performance.md"
	@echo "make probe  build plugin/tcpdrop.bpf.o only (ARCH=arm64: build/arm64/tcpdrop.bpf.o)"
	@echo "make deb    build/deb/telegraf-tcpdrop_<version>_<arch>.deb, then lintian"
	@echo "            (ARCH=arm64: cross-built, build/arm64/deb/telegraf-tcpdrop_<version>_arm64.deb)"

# The Debian package, from the files git tracks (a clean clone builds the
# same): build/deb/telegraf-tcpdrop_<version>_<arch>.deb. Version from
# pyproject.toml. The pinned wheels of the private InfluxDB client are
# fetched here (pip, hashes checked), so the package build itself is offline.
# Another CPU's package (ARCH=arm64) is cross-built: dpkg-buildpackage -a.
DEB_ARCH := $(subst x86,amd64,$(ARCH))
DEB_BUILD := $(if $(CROSS),build/$(ARCH)/deb,build/deb)
# A cross build links the launcher against the other CPU's libc, which
# dpkg-shlibdeps then finds (Debian's multiarch: dpkg --add-architecture).
DEB_PACKAGES := debhelper dh-python python3-all python3-setuptools python3-pip dpkg-dev \
	fakeroot lintian clang llvm libbpf-dev build-essential \
	$(if $(CROSS),crossbuild-essential-$(DEB_ARCH) libc6-dev:$(DEB_ARCH))
# The package is HEAD's tree (git archive): its version is HEAD's too.
VERSION = $(shell git show HEAD:pyproject.toml | $(PYTHON) -c 'import sys, tomllib; print(tomllib.loads(sys.stdin.read())["project"]["version"])')

deb:
	$(if $(CROSS),dpkg --add-architecture $(DEB_ARCH))
	$(call apt_install,$(DEB_PACKAGES))
	rm -rf $(DEB_BUILD) && mkdir -p $(DEB_BUILD)/src
	@git diff --quiet HEAD -- || echo "W! the package is HEAD ($$(git rev-parse --short HEAD)): uncommitted changes are not in it"
	git archive --format=tar HEAD | tar -xf - -C $(DEB_BUILD)/src
	cp -r $(DEB_BUILD)/src/packaging/deb/debian $(DEB_BUILD)/src/debian
	cp $(DEB_BUILD)/src/conf/systemd/telegraf-tcpdrop.service $(DEB_BUILD)/src/debian/telegraf-tcpdrop.service
	printf 'telegraf-tcpdrop (%s) unstable; urgency=medium\n\n  * Release %s.\n\n -- telegraf-tcpdrop developers <dev@telegraf-tcpdrop.invalid>  %s\n' \
		'$(VERSION)' '$(VERSION)' "$$(date -R -d @$$(git log -1 --format=%ct))" > $(DEB_BUILD)/src/debian/changelog
	$(PYTHON) -m pip download -q --no-deps --require-hashes -r $(DEB_BUILD)/src/packaging/deb/vendor.txt \
		-d $(DEB_BUILD)/src/vendor-wheels
	# MAKEFLAGS: this make's variables (ARCH) stay out of the package's build.
	# nocheck: dh warns that a cross build cannot run tests (debian/rules runs none).
	cd $(DEB_BUILD)/src && MAKEFLAGS= $(if $(CROSS),DEB_BUILD_OPTIONS=nocheck) \
		dpkg-buildpackage -b -us -uc $(if $(CROSS),-a $(DEB_ARCH))
	lintian --info --display-info $(DEB_BUILD)/telegraf-tcpdrop_$(VERSION)_*.deb
