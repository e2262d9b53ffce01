# Builds the probe object and runs the project. `make help` lists targets.
ARCH := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')
CLANG ?= clang
PYTHON ?= /usr/bin/python3
VENV := .venv

# -g: BTF for CO-RE relocations and map definitions.  -O2: the verifier needs
# optimized code.  -D__TARGET_ARCH: the register names in bpf_tracing.h.
# -ffile-prefix-map: no build directory in the object (reproducible builds).
BPF_CFLAGS := -g -O2 -target bpf -D__TARGET_ARCH_$(ARCH) -Wall -Werror \
	-ffile-prefix-map=$(CURDIR)/=

.PHONY: probe run test clean help
probe: plugin/tcpdrop.bpf.o

plugin/tcpdrop.bpf.o: plugin/tcpdrop.c plugin/tcpdrop.h plugin/kernel.h
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

clean:
	rm -f plugin/tcpdrop.bpf.o
