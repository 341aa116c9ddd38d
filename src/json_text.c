/*
 * json_text.c — JSON texts read and written from C, outside SQL: a scalar
 * at a dotted path of a reply ("messages.0.id"), and a string literal
 * appended to a request body or an outcome batch. The carriers, the
 * dispatcher, the webhook worker and the SMPP bind build their JSON with
 * these (json_text.h).
 *
 * Reading walks the text once with PostgreSQL's JSON lexer (no jsonb is
 * built) and keeps the first scalar whose path matches; anything that is
 * not JSON reads as absent.
 */
#include "envoisms.h"

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "utils/json.h"

#include "json_text.h"

typedef struct JsonPathState
{
	char	   *want[8];		/* path components */
	int			nwant;
	int			depth;			/* containers entered */
	char	   *at[16];			/* current key (or index) per depth */
	int			index[16];		/* next array index per depth */
	bool		is_array[16];
	char	   *found;
} JsonPathState;

/* Whether the value the lexer is at sits at the wanted path. */
static bool
path_matches(JsonPathState *s)
{
	if (s->depth != s->nwant)
		return false;
	for (int i = 0; i < s->nwant; i++)
		if (s->at[i + 1] == NULL || strcmp(s->at[i + 1], s->want[i]) != 0)
			return false;
	return true;
}

/* Lexer callback: an object opens one level deeper. */
static void
jp_object_start(void *state)
{
	JsonPathState *s = state;

	if (++s->depth < 16)
	{
		s->is_array[s->depth] = false;
		s->at[s->depth] = NULL;
	}
}

/* Lexer callback: an array opens one level deeper, its index at 0. */
static void
jp_array_start(void *state)
{
	JsonPathState *s = state;

	if (++s->depth < 16)
	{
		s->is_array[s->depth] = true;
		s->index[s->depth] = 0;
		s->at[s->depth] = NULL;
	}
}

/* Lexer callback: a container closes. */
static void
jp_end(void *state)
{
	((JsonPathState *) state)->depth--;
}

/* Lexer callback: the key of the value that follows. */
static void
jp_field(void *state, char *fname, bool isnull)
{
	JsonPathState *s = state;

	if (s->depth < 16)
		s->at[s->depth] = fname;
}

/* Lexer callback: the index of the element that follows. */
static void
jp_element(void *state, bool isnull)
{
	JsonPathState *s = state;

	if (s->depth < 16)
		s->at[s->depth] = psprintf("%d", s->index[s->depth]++);
}

/* Lexer callback: keep the first scalar found at the wanted path. */
static void
jp_scalar(void *state, char *token, JsonTokenType tokentype)
{
	JsonPathState *s = state;

	if (s->found == NULL && tokentype != JSON_TOKEN_NULL && s->depth < 16 && path_matches(s))
		s->found = token;
}

/* The first scalar at a dotted path of a JSON text (palloc'd), NULL when absent. */
char *
JsonGetPath(const char *json, size_t len, const char *path)
{
	JsonPathState state;
	JsonSemAction sem;
	JsonLexContext *lex;
	char	   *copy;
	char	   *tok;
	char	   *save;

	if (json == NULL || len == 0)
		return NULL;
	memset(&state, 0, sizeof(state));
	copy = pstrdup(path);
	for (tok = strtok_r(copy, ".", &save); tok && state.nwant < 8; tok = strtok_r(NULL, ".", &save))
		state.want[state.nwant++] = tok;
	memset(&sem, 0, sizeof(sem));
	sem.semstate = &state;
	sem.object_start = jp_object_start;
	sem.object_end = jp_end;
	sem.array_start = jp_array_start;
	sem.array_end = jp_end;
	sem.object_field_start = jp_field;
	sem.array_element_start = jp_element;
	sem.scalar = jp_scalar;
	lex = makeJsonLexContextCstringLen(pnstrdup(json, len), len, PG_UTF8, true);
	if (pg_parse_json(lex, &sem) != JSON_SUCCESS)
		return NULL;
	return state.found;
}

/* Append s (NULL as "") as a JSON string literal. */
void
JsonAppendString(StringInfo buf, const char *s)
{
	escape_json(buf, s ? s : "");
}
