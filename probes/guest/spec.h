/*
 * spec.c: the bookkeeping of the probe's spec-check tokens (`vpci-spec`, `vmmio-spec` in
 * virtio_spec.c, `legacy-spec` in legacy_spec.c). Each token prints one line per check,
 *
 *   <token>-<name>: ok
 *   <token>-<name>: fail key=0x.. ...      (what was seen)
 *   <token>-<name>: info key=0x.. ...      (implementation-specific values, no verdict)
 *
 * then "<token>-result: ok | fail N of M: <names> | fail <reason>".
 */
#ifndef PROBE_SPEC_H
#define PROBE_SPEC_H

#include "lib.h"

/* Starts a token's checks: `tok` prefixes every line (a string constant). */
void spec_begin(const char *tok);
/* Starts the line "<token>-<name>: ok" or "...: fail" and counts the check; the caller
 * adds what it saw after a failure (spec_seen) and ends the line with spec_end_line(). */
void spec_check(const char *name, int ok);
/* Starts the line "<token>-<name>: info" (not counted); values follow as spec_seen(),
 * then spec_end_line(). */
void spec_info(const char *name);
/* " key=0x.." */
void spec_seen(const char *key, u64 val);
void spec_end_line(void);
/* "<token>-result: ok | fail <err> | fail N of M: <names>"; failed checks add
 * "<token>: checks failed" to the probe's failures (`err`, if not NULL, was a failure
 * the caller has reported already). */
void spec_result(const char *err);

#endif
