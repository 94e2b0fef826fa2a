/*
 * The bookkeeping of the spec-check tokens: see spec.h.
 */
#include "spec.h"

static const char *token;	/* the prefix of every line */
static u32 n_checks, n_failed;
static char failed_names[160];
static u32 failed_len;

void spec_begin(const char *tok)
{
	token = tok;
	n_checks = n_failed = failed_len = 0;
	failed_names[0] = 0;
}

static void start_line(const char *name)
{
	puts(token);
	putc('-');
	puts(name);
}

void spec_check(const char *name, int ok)
{
	n_checks++;
	start_line(name);
	puts(ok ? ": ok" : ": fail");
	if (ok)
		return;
	n_failed++;
	if (failed_len && failed_len < sizeof(failed_names) - 1)
		failed_names[failed_len++] = ' ';
	for (const char *p = name; *p && failed_len < sizeof(failed_names) - 1; p++)
		failed_names[failed_len++] = *p;
	failed_names[failed_len] = 0;
}

void spec_info(const char *name)
{
	start_line(name);
	puts(": info");
}

void spec_end_line(void) { puts("\n"); }

void spec_seen(const char *key, u64 val)
{
	putc(' ');
	puts(key);
	putc('=');
	put_hex(val);
}

void spec_result(const char *err)
{
	puts(token);
	puts("-result: ");
	if (err) {
		puts("fail ");
		puts(err);
	} else if (n_failed) {
		puts("fail ");
		put_dec(n_failed);
		puts(" of ");
		put_dec(n_checks);
		puts(": ");
		puts(failed_names);
		char reason[40];
		u32 n = 0;
		for (const char *p = token; *p && n < 20; p++)
			reason[n++] = *p;
		for (const char *p = ": checks failed"; *p; p++)
			reason[n++] = *p;
		reason[n] = 0;
		fail(reason);
	} else {
		puts("ok");
	}
	puts("\n");
}
