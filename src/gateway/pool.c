/*
 * pool.c — the gateway's database connections.
 *
 * A fixed array of libpq connections, one per database worker thread
 * (dbwork.c), so a request never waits for a connection that another
 * request is using (acquire cannot block: there are as many connections as
 * workers). Each connection has two prepared statements: "api" (the one
 * call of envoisms.api per request) and "health" (SELECT 1). The precheck
 * before a large body (envoisms.api_precheck) is sent unprepared: it is
 * rare, and a database whose extension predates it must keep working.
 *
 * Connections are opened lazily and re-opened when broken. A connection is
 * broken when PQstatus says so, when a query fails with SQLSTATE class 08 or
 * 57P01..57P03 (admin shutdown, crash, cannot connect now), or when its
 * socket turns readable while idle (the server said goodbye). After a failed
 * connect, attempts are paused for a second so a down database costs each
 * request one cheap check, not a connect timeout; those requests get 503
 * SERVICE_UNAVAILABLE with Retry-After and the pool heals by itself.
 *
 * Write requests (any method but GET and HEAD) carry a request token, a
 * UUID of the wall clock's milliseconds and random bits, and run as
 * envoisms.api_once(token, ...), which records a successful reply under the
 * token in the request's own transaction (src/sql/81_request_outcomes.sql).
 * When the connection drops after such a request was sent, nobody knows
 * whether it committed: instead of a 503 the pool reconnects, for up to
 * --recover-wait seconds (to the new primary when the old one died: the
 * conninfo lists both with target_session_attrs=read-write), and asks
 * envoisms.request_outcome(token). A recorded reply is the answer; none
 * means the request did not commit and now never will (the lookup fences
 * the token), so it is run again under a new token. A client thus sees
 * each write once, with or without an Idempotency-Key. A database whose
 * extension predates api_once gets plain envoisms.api() calls, as before.
 *
 * Locking: one mutex guards the in_use flags and the pause; a connection is
 * used only by the thread that acquired it, outside the mutex.
 */
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <libpq-fe.h>

#include "gateway.h"

#define TEXTOID 25
#define RECONNECT_PAUSE 1.0
#define RETRY_AFTER "1"
#define RECOVER_PAUSE_NS 200000000L	/* between reconnects while recovering */
#define TOKEN_LEN 32			/* hex digits of a request token */

struct PoolConn
{
	PGconn	   *conn;
	bool		in_use;
	bool		tokens;			/* api_once and outcome are prepared */
};

static PoolConn *conns;
static int	pool_size;
static int	in_use_count;
static double paused_until;
static const char *pool_conninfo;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t freed = PTHREAD_COND_INITIALIZER;

static const char *API_SQL =
"SELECT status, headers::text, body::text "
"FROM envoisms.api($1, $2, $3, $4::jsonb, $5, $6::inet)";

/* a write request, its reply recorded under its token; then its outcome */
static const char *API_ONCE_SQL =
"SELECT status, headers::text, body::text "
"FROM envoisms.api_once($1::uuid, $2, $3, $4, $5::jsonb, $6, $7::inet)";
static const char *OUTCOME_SQL =
"SELECT status, headers::text, body::text FROM envoisms.request_outcome($1::uuid)";

/* rare (large bodies only), and absent from older extensions: not prepared */
static const char *PRECHECK_SQL =
"SELECT status, headers::text, body::text "
"FROM envoisms.api_precheck($1, $2, $3::jsonb, $4::inet)";

/* Allocates the pool; connections open lazily on first use. */
bool
PoolInit(const char *conninfo, int size)
{
	conns = calloc(size, sizeof(PoolConn));
	if (conns == NULL)
		return false;
	pool_size = size;
	pool_conninfo = conninfo;
	return true;
}

/* Closes the idle connections at shutdown. */
void
PoolClose(void)
{
	pthread_mutex_lock(&lock);
	for (int i = 0; i < pool_size; i++)
	{
		if (conns[i].conn != NULL && !conns[i].in_use)
		{
			PQfinish(conns[i].conn);
			conns[i].conn = NULL;
		}
	}
	pthread_mutex_unlock(&lock);
}

/* The gauges /metrics shows. */
void
PoolStats(int *size, int *in_use, int *connected)
{
	int			n = 0;

	pthread_mutex_lock(&lock);
	for (int i = 0; i < pool_size; i++)
		if (conns[i].conn != NULL)
			n++;
	*size = pool_size;
	*in_use = in_use_count;
	*connected = n;
	pthread_mutex_unlock(&lock);
}

/* Takes a free connection, preferring one that is already open. */
static PoolConn *
Acquire(void)
{
	PoolConn   *pick = NULL;

	pthread_mutex_lock(&lock);
	while (in_use_count == pool_size)
		pthread_cond_wait(&freed, &lock);
	for (int i = 0; i < pool_size; i++)
	{
		if (conns[i].in_use)
			continue;
		if (pick == NULL || (pick->conn == NULL && conns[i].conn != NULL))
			pick = &conns[i];
		if (pick->conn != NULL)
			break;
	}
	pick->in_use = true;
	in_use_count++;
	pthread_mutex_unlock(&lock);
	return pick;
}

/* Gives a connection back and wakes a waiter. */
static void
Release(PoolConn *pc)
{
	pthread_mutex_lock(&lock);
	pc->in_use = false;
	in_use_count--;
	pthread_cond_signal(&freed);
	pthread_mutex_unlock(&lock);
}

/* Drops a broken connection; the next use reconnects. */
static void
Discard(PoolConn *pc)
{
	if (pc->conn != NULL)
	{
		PQfinish(pc->conn);
		pc->conn = NULL;
	}
}

/* An idle connection whose socket is readable was closed by the server. */
static bool
IdleConnectionBroken(PGconn *conn)
{
	struct pollfd pfd;

	if (PQstatus(conn) != CONNECTION_OK)
		return true;
	pfd.fd = PQsocket(conn);
	pfd.events = POLLIN;
	pfd.revents = 0;
	if (pfd.fd < 0)
		return true;
	if (poll(&pfd, 1, 0) <= 0)
		return false;
	if (PQconsumeInput(conn) == 0 || PQstatus(conn) != CONNECTION_OK)
		return true;
	/* whatever else arrived unasked (a FATAL notice) also means goodbye */
	return (pfd.revents & (POLLHUP | POLLERR)) != 0;
}

/* Prepares one statement on a fresh connection; false (logged unless quiet) on failure. */
static bool
Prepare(PGconn *conn, const char *name, const char *sql, int nparams, bool quiet)
{
	static const Oid types[7] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	PGresult   *res = PQprepare(conn, name, sql, nparams, types);
	bool		ok = res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK;

	if (!ok && !quiet)
		ErrorLog("cannot prepare %s: %s", name,
				 res ? PQresultErrorMessage(res) : PQerrorMessage(conn));
	PQclear(res);
	return ok;
}

/* Prepares the request-token statements; false (said once) when the extension predates them. */
static bool
PrepareTokens(PGconn *conn)
{
	static bool warned;

	if (Prepare(conn, "api_once", API_ONCE_SQL, 7, true) &&
		Prepare(conn, "outcome", OUTCOME_SQL, 1, true))
		return true;
	if (!__atomic_exchange_n(&warned, true, __ATOMIC_RELAXED))
		ErrorLog("envoisms.api_once() is not usable in this database (%s): a write request whose "
				 "connection drops is answered 503; update the extension", PQerrorMessage(conn));
	return false;
}

/* A new request token: 12 hex digits of wall-clock milliseconds, 20 random. */
static void
NewToken(char *out)
{
	static uint64_t counter;
	unsigned char b[TOKEN_LEN / 2];
	struct timespec ts;
	uint64_t	ms;

	clock_gettime(CLOCK_REALTIME, &ts);
	ms = (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
	for (int i = 0; i < 6; i++)
		b[i] = (unsigned char) (ms >> (8 * (5 - i)));
	if (getrandom(b + 6, sizeof(b) - 6, 0) != (ssize_t) (sizeof(b) - 6))
	{
		/* unique is what matters: a process-wide counter and the clock's ns */
		uint64_t	n = __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);

		memcpy(b + 6, &n, 8);
		b[14] = (unsigned char) ts.tv_nsec;
		b[15] = (unsigned char) (ts.tv_nsec >> 8);
	}
	for (int i = 0; i < (int) sizeof(b); i++)
		sprintf(out + 2 * i, "%02x", b[i]);
	out[TOKEN_LEN] = '\0';
}

/* Sleeps between reconnects while a lost request's outcome is sought. */
static void
PauseBeforeReconnect(void)
{
	struct timespec ts = {0, RECOVER_PAUSE_NS};

	nanosleep(&ts, NULL);
}

/* Makes pc->conn usable; false (after counting the error) when it cannot. */
static bool
EnsureConnected(PoolConn *pc)
{
	/* keywords before dbname are defaults that the user's conninfo overrides */
	static const char *const keys[] = {"connect_timeout", "application_name", "dbname", NULL};
	const char *values[] = {"5", "envoisms-gateway", pool_conninfo, NULL};
	double		now;
	bool		paused;

	if (pc->conn != NULL)
	{
		if (!IdleConnectionBroken(pc->conn))
			return true;
		Discard(pc);
		MetricsDbError("disconnected");
	}

	now = NowSeconds();
	pthread_mutex_lock(&lock);
	paused = now < paused_until;
	pthread_mutex_unlock(&lock);
	if (paused)
		return false;

	pc->conn = PQconnectdbParams(keys, values, 1);
	if (pc->conn == NULL || PQstatus(pc->conn) != CONNECTION_OK)
	{
		ErrorLog("cannot connect to the database: %s",
				 pc->conn ? PQerrorMessage(pc->conn) : "out of memory");
		MetricsDbError("connect");
		Discard(pc);
		pthread_mutex_lock(&lock);
		paused_until = NowSeconds() + RECONNECT_PAUSE;
		pthread_mutex_unlock(&lock);
		return false;
	}
	if (!Prepare(pc->conn, "api", API_SQL, 6, false) ||
		!Prepare(pc->conn, "health", "SELECT 1", 0, false))
	{
		MetricsDbError("prepare");
		Discard(pc);
		pthread_mutex_lock(&lock);
		paused_until = NowSeconds() + RECONNECT_PAUSE;
		pthread_mutex_unlock(&lock);
		return false;
	}
	pc->tokens = PrepareTokens(pc->conn);
	MetricsConnected();
	return true;
}

/* Whether an error means the connection itself is gone. */
static bool
ConnectionLost(PGconn *conn, const char *sqlstate)
{
	if (PQstatus(conn) != CONNECTION_OK)
		return true;
	if (sqlstate == NULL)
		return false;
	return strncmp(sqlstate, "08", 2) == 0 ||
		strcmp(sqlstate, "57P01") == 0 || strcmp(sqlstate, "57P02") == 0 ||
		strcmp(sqlstate, "57P03") == 0;
}

/* Fills result with an error the gateway answers for the database. */
static void
Envelope(ApiResult *result, int status, const char *code, const char *message,
		 const char *headers)
{
	result->status = status;
	result->body = ErrorEnvelope(code, message);
	result->headers = headers ? strdup(headers) : NULL;
}

/* The 503 of a database that cannot be reached. */
static void
Unavailable(ApiResult *result)
{
	result->unavailable = true;
	Envelope(result, 503, "SERVICE_UNAVAILABLE",
			 "the database is unavailable; retry shortly",
			 "{\"Retry-After\": \"" RETRY_AFTER "\"}");
}

/* A column of the first row, malloc'd; NULL for SQL NULL. */
static char *
CopyValue(PGresult *res, int col)
{
	if (PQgetisnull(res, 0, col))
		return NULL;
	return strdup(PQgetvalue(res, 0, col));
}

/* How one call of a reply function ended. */
typedef enum CallOutcome
{
	CALL_ROW,					/* one row: *result holds it */
	CALL_NO_ROW,				/* no row, and none was required */
	CALL_FAILED,				/* *result holds the error envelope */
	CALL_UNDEFINED				/* the function does not exist in this database */
} CallOutcome;

/* Copies the one row of an api_reply result into *result. */
static void
TakeRow(PGresult *res, ApiResult *result)
{
	result->status = atoi(PQgetvalue(res, 0, 0));
	result->headers = CopyValue(res, 1);
	result->body = CopyValue(res, 2);
}

/* What request_outcome said of a token. */
typedef enum Outcome
{
	OUTCOME_COMMITTED,			/* *result holds the recorded reply */
	OUTCOME_NONE,				/* it did not commit, and now never will */
	OUTCOME_LOST				/* no answer: the connection is to be dropped */
} Outcome;

/* Asks a fresh connection what became of the request sent under token. */
static Outcome
AskOutcome(PoolConn *pc, const char *token, ApiResult *result)
{
	PGresult   *res = PQexecPrepared(pc->conn, "outcome", 1, &token, NULL, NULL, 0);
	Outcome		outcome = OUTCOME_LOST;

	if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK && PQnfields(res) == 3 &&
		PQntuples(res) <= 1)
	{
		if (PQntuples(res) == 1)
		{
			TakeRow(res, result);
			outcome = OUTCOME_COMMITTED;
		}
		else
			outcome = OUTCOME_NONE;
	}
	else
		ErrorLog("request %s: cannot learn its outcome yet: %s", token,
				 res ? PQresultErrorMessage(res) : PQerrorMessage(pc->conn));
	PQclear(res);
	return outcome;
}

/*
 * Runs one statement whose rows are envoisms.api_reply (status, headers,
 * body) on a pool connection: the prepared statement named prepared, or sql
 * with its text parameters when prepared is NULL. Retries on a fresh
 * connection once when a reused one turns out dead and the call is safe to
 * repeat, and on serialization failures and deadlocks; maps everything
 * else to the envelope the client gets.
 *
 * With a token (a write request: values[0] is the token, the statement's
 * own parameters follow), the statement runs as "api_once" where the
 * connection has it, and a connection lost after sending is recovered as
 * the file's comment says, within --recover-wait seconds.
 */
static CallOutcome
CallReply(const char *what, const char *prepared, const char *sql, int nparams,
		  const char *const *values, bool safe, bool row_required, char *token,
		  ApiResult *result)
{
	static const Oid types[7] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	const char *const *params = token ? values + 1 : values;
	int			attempts = 0;
	double		recover_until = 0;	/* set when a sent write request's connection dropped */

	memset(result, 0, sizeof(*result));
	for (;;)
	{
		PoolConn   *pc = Acquire();
		bool		reused = pc->conn != NULL;
		bool		tokened;
		PGresult   *res;
		const char *sqlstate;
		ExecStatusType st;

		attempts++;
		if (!EnsureConnected(pc))
		{
			Release(pc);
			if (recover_until > 0 && NowSeconds() < recover_until)
			{
				PauseBeforeReconnect();
				continue;
			}
			if (recover_until > 0)
			{
				ErrorLog("request %s: outcome unknown after %d s", token, config.recover_wait);
				MetricsOutcome("unknown");
			}
			Unavailable(result);
			return CALL_FAILED;
		}
		if (recover_until > 0)
		{
			/* first, what became of the attempt whose connection dropped */
			Outcome		outcome = pc->tokens ? AskOutcome(pc, token, result) : OUTCOME_LOST;

			if (outcome == OUTCOME_COMMITTED)
			{
				Release(pc);
				MetricsOutcome("recovered");
				return CALL_ROW;
			}
			if (outcome == OUTCOME_LOST)
			{
				Discard(pc);
				Release(pc);
				if (pc->tokens && NowSeconds() < recover_until)
				{
					PauseBeforeReconnect();
					continue;
				}
				ErrorLog("request %s: outcome unknown: %s", token,
						 pc->tokens ? "no answer in time" : "the new connection cannot ask (no envoisms.request_outcome)");
				MetricsOutcome("unknown");
				Unavailable(result);
				return CALL_FAILED;
			}
			/* it did not commit and never will: run it again, under a new token */
			MetricsOutcome("replayed");
			NewToken(token);
		}

		tokened = token != NULL && pc->tokens;
		if (tokened)
			res = PQexecPrepared(pc->conn, "api_once", nparams + 1, values, NULL, NULL, 0);
		else if (prepared != NULL)
			res = PQexecPrepared(pc->conn, prepared, nparams, params, NULL, NULL, 0);
		else
			res = PQexecParams(pc->conn, sql, nparams, types, params, NULL, NULL, 0);
		st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
		if (st == PGRES_TUPLES_OK && PQnfields(res) == 3 &&
			(PQntuples(res) == 1 || (PQntuples(res) == 0 && !row_required)))
		{
			bool		row = PQntuples(res) == 1;

			if (row)
				TakeRow(res, result);
			PQclear(res);
			Release(pc);
			if (row && (result->status < 100 || result->status > 599))
			{
				ErrorLog("%s returned HTTP status %d", what, result->status);
				free(result->headers);
				free(result->body);
				Envelope(result, 500, "INTERNAL_ERROR", "internal error", NULL);
				return CALL_FAILED;
			}
			return row ? CALL_ROW : CALL_NO_ROW;
		}

		sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
		if (ConnectionLost(pc->conn, sqlstate))
		{
			ErrorLog("database connection lost: %s", PQerrorMessage(pc->conn));
			MetricsDbError("lost");
			PQclear(res);
			Discard(pc);
			Release(pc);
			if (tokened)
			{
				/* sent, fate unknown: reconnect and ask (above) */
				if (recover_until == 0)
					recover_until = NowSeconds() + config.recover_wait;
				continue;
			}
			/* a reused connection may have died while idle: retry reads once */
			if (safe && reused && attempts < 2)
				continue;
			Unavailable(result);
			return CALL_FAILED;
		}
		if (sqlstate && strcmp(sqlstate, "42883") == 0)
		{
			PQclear(res);
			Release(pc);
			return CALL_UNDEFINED;
		}
		MetricsDbError("query");
		if (sqlstate && (strcmp(sqlstate, "40001") == 0 || strcmp(sqlstate, "40P01") == 0) &&
			attempts < 3)
		{
			PQclear(res);
			Release(pc);
			continue;
		}
		if (st == PGRES_TUPLES_OK)
			ErrorLog("%s returned %d rows", what, PQntuples(res));
		else
			ErrorLog("%s failed (SQLSTATE %s): %s", what, sqlstate ? sqlstate : "?",
					 res ? PQresultErrorMessage(res) : PQerrorMessage(pc->conn));
		if (sqlstate && (strcmp(sqlstate, "22021") == 0 || strcmp(sqlstate, "22P02") == 0))
			Envelope(result, 400, "INVALID_REQUEST", "the request could not be read", NULL);
		else if (sqlstate && (strcmp(sqlstate, "57014") == 0 || strcmp(sqlstate, "53300") == 0 ||
							  strncmp(sqlstate, "53", 2) == 0 || strcmp(sqlstate, "25006") == 0))
		{
			/* 25006: a primary being demoted refuses writes; the next connection finds the new one */
			if (strcmp(sqlstate, "25006") == 0)
				Discard(pc);
			result->unavailable = true;
			Envelope(result, 503, "SERVICE_UNAVAILABLE", "the database is busy; retry shortly",
					 "{\"Retry-After\": \"" RETRY_AFTER "\"}");
		}
		else
			Envelope(result, 500, "INTERNAL_ERROR", "internal error", NULL);
		PQclear(res);
		Release(pc);
		return CALL_FAILED;
	}
}

/* The one call of envoisms.api() of a request; a write request's with a request token. */
void
PoolCallApi(const char *method, const char *path, const char *query,
			const char *headers_json, const char *body,
			const char *client_ip, ApiResult *result)
{
	char		token[TOKEN_LEN + 1];
	const char *values[7] = {token, method, path, query, headers_json, body,
	(client_ip && *client_ip) ? client_ip : NULL};
	bool		safe = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
	CallOutcome outcome;

	if (safe || config.recover_wait == 0)
		outcome = CallReply("envoisms.api", "api", NULL, 6, values + 1, safe, true, NULL, result);
	else
	{
		NewToken(token);
		outcome = CallReply("envoisms.api", "api", NULL, 6, values, false, true, token, result);
	}
	if (outcome == CALL_UNDEFINED)
	{
		ErrorLog("envoisms.api does not exist in this database");
		Envelope(result, 500, "INTERNAL_ERROR", "internal error", NULL);
	}
}

/* The cheap key check before a large body (see gateway.h). */
void
PoolCallPrecheck(const char *method, const char *path, const char *headers_json,
				 const char *client_ip, ApiResult *result, bool *refused)
{
	static bool warned;
	const char *values[4] = {method, path, headers_json,
	(client_ip && *client_ip) ? client_ip : NULL};

	switch (CallReply("envoisms.api_precheck", NULL, PRECHECK_SQL, 4, values, true, false, NULL, result))
	{
		case CALL_ROW:
		case CALL_FAILED:
			*refused = true;
			return;
		case CALL_UNDEFINED:
			/* an older extension: read the body, as before the precheck existed */
			if (!__atomic_exchange_n(&warned, true, __ATOMIC_RELAXED))
				ErrorLog("envoisms.api_precheck() does not exist in this database: large "
						 "bodies are read before their key is checked; update the extension");
			*refused = false;
			return;
		case CALL_NO_ROW:
			*refused = false;
			return;
	}
}

/* /healthz: SELECT 1, once more on a fresh connection if a reused one died. */
bool
PoolHealthCheck(void)
{
	for (int attempt = 0; attempt < 2; attempt++)
	{
		PoolConn   *pc = Acquire();
		PGresult   *res;
		bool		ok;

		if (!EnsureConnected(pc))
		{
			Release(pc);
			return false;
		}
		res = PQexecPrepared(pc->conn, "health", 0, NULL, NULL, NULL, 0);
		ok = res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK;
		if (!ok && ConnectionLost(pc->conn, res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL))
		{
			MetricsDbError("lost");
			Discard(pc);
		}
		PQclear(res);
		Release(pc);
		if (ok)
			return true;
	}
	return false;
}
