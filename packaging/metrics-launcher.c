// SPDX-License-Identifier: MIT
/*
 * /usr/libexec/telegraf-tcpdrop/metrics: `telegraf-tcpdrop metrics ARGS`
 * with CAP_BPF, CAP_PERFMON and CAP_SYSLOG, for Telegraf's inputs.execd, so
 * that Telegraf itself holds none of them (README, "Privileges").
 *
 * The package's postinst gives this file the three capabilities as
 * *permitted* file capabilities (setcap ...=p), owner root, group
 * tcpdrop-metrics, mode 0750: only that group may run it, and Telegraf's
 * service gets the group (telegraf.service.d/tcpdrop.conf). It raises the
 * three as ambient capabilities, which pass through execve to the one
 * program it runs: Debian's python3 in isolated mode on the package's
 * script, with a fixed environment and working directory. Nothing of the
 * caller's chooses the program, its interpreter, its module path or its
 * environment; the caller's arguments go to `metrics`, which parses them.
 */
#include <errno.h>
#include <linux/capability.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef CAP_PERFMON	/* Linux 5.8 */
#define CAP_PERFMON 38
#define CAP_BPF 39
#endif

#define PYTHON "/usr/bin/python3"
#define SCRIPT "/usr/bin/telegraf-tcpdrop"
#define MAX_ARGS 256

static const int caps[] = { CAP_BPF, CAP_PERFMON, CAP_SYSLOG };
#define NCAPS (sizeof(caps) / sizeof(caps[0]))

/* One line, in Telegraf's log format (execd passes stderr on by its prefix). */
static int fail(const char *what, const char *why)
{
	fprintf(stderr, "E! [telegraf-tcpdrop] %s: %s\n", what, why);
	return 1;
}

int main(int argc, char **argv)
{
	struct __user_cap_header_struct header = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
	/* -I: no PYTHON* variables, no user site, not the script's directory
	 * nor the working directory on the module path. */
	char *args[MAX_ARGS + 4] = { PYTHON, "-I", SCRIPT, "metrics" };
	char *env[] = { "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", NULL };
	unsigned i;

	if (argc > MAX_ARGS)
		return fail("too many arguments", "at most 256");
	if (syscall(SYS_capget, &header, data))
		return fail("capget", strerror(errno));
	for (i = 0; i < NCAPS; i++) {
		if (!(data[caps[i] / 32].permitted & (1u << (caps[i] % 32))))
			return fail(argv[0], "does not hold its capabilities (CAP_BPF, CAP_PERFMON, "
				    "CAP_SYSLOG): reinstall the package (its postinst sets them with "
				    "setcap), and do not set NoNewPrivileges= for telegraf.service");
		/* Ambient needs each in the inheritable set too, which a
		 * process may fill from its permitted one. */
		data[caps[i] / 32].inheritable |= 1u << (caps[i] % 32);
	}
	if (syscall(SYS_capset, &header, data))
		return fail("capset", strerror(errno));
	for (i = 0; i < NCAPS; i++)
		if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, caps[i], 0, 0))
			return fail("raise ambient capabilities", strerror(errno));
	if (chdir("/"))
		return fail("chdir /", strerror(errno));
	for (i = 1; i < (unsigned)argc; i++)
		args[i + 3] = argv[i];
	execve(PYTHON, args, env);
	return fail(PYTHON, strerror(errno));
}
