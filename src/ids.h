/*
 * ids.h — time-ordered public ids: prefix "_" 12 hex digits of Unix
 * milliseconds, then 16 random hex digits (msg_0196f3a1b2c3d4e5f6a7b8c9d0e1).
 */
#ifndef ENVOISMS_IDS_H
#define ENVOISMS_IDS_H

#include <stdbool.h>
#include <stddef.h>

#define ENVOISMS_ID_PREFIX_MIN 2
#define ENVOISMS_ID_PREFIX_MAX 8
/* Longest id plus its NUL: 8 + 1 + 12 + 16 + 1. */
#define ENVOISMS_ID_BUFSIZE 38

/* True when prefix matches ^[a-z]{2,8}$. */
extern bool EnvoismsIdPrefixValid(const char *prefix, size_t len);

/*
 * Write a new id for prefix into out (ENVOISMS_ID_BUFSIZE bytes). The prefix
 * must be valid (ereport(ERROR) otherwise). Ids made later in one backend
 * always sort after earlier ones, even within one millisecond.
 */
extern void EnvoismsNewId(const char *prefix, char out[ENVOISMS_ID_BUFSIZE]);

#endif							/* ENVOISMS_IDS_H */
