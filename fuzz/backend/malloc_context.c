/*
 * malloc_context.c — a memory context that gives every palloc its own
 * malloc, for the fuzz targets run inside a backend.
 *
 * PostgreSQL's AllocSet carves chunks out of 8 kB blocks, so AddressSanitizer
 * only sees the blocks: a write past the end of a palloc'd buffer lands in
 * the next chunk and goes unnoticed. Here each chunk is one malloc'd region
 * with the header PostgreSQL requires in front (the owning context pointer,
 * immediately before the chunk) and nothing behind, so ASan's redzone starts
 * at the exact end of what the caller asked for. Reset frees every chunk;
 * the targets reset once per input, so nothing outlives an input.
 *
 * The context claims the AllocSetContext tag, because MemoryContextIsValid()
 * knows no other; every operation goes through the methods table, so no code
 * ever reads it as an AllocSet.
 */
#include "postgres.h"

#include "lib/ilist.h"
#include "nodes/memnodes.h"
#include "utils/memutils.h"

#include "fuzz_backend.h"

typedef struct MallocContext
{
	MemoryContextData header;
	dlist_head	chunks;
} MallocContext;

/* In front of each chunk: its list link, its size, then the owner (last). */
typedef struct MallocChunk
{
	dlist_node	node;
	Size		size;
	MemoryContext context;
} MallocChunk;

StaticAssertDecl(sizeof(MallocChunk) % MAXIMUM_ALIGNOF == 0,
				 "chunk header keeps the chunk MAXALIGNed");

#define CHUNK_OF(pointer) ((MallocChunk *) ((char *) (pointer) - sizeof(MallocChunk)))

static void *
malloc_context_alloc(MemoryContext context, Size size)
{
	MallocContext *set = (MallocContext *) context;
	MallocChunk *chunk = malloc(sizeof(MallocChunk) + size);

	if (chunk == NULL)
		return NULL;
	chunk->size = size;
	chunk->context = context;
	dlist_push_tail(&set->chunks, &chunk->node);
	context->mem_allocated += size;
	return (char *) chunk + sizeof(MallocChunk);
}

static void
malloc_context_free(MemoryContext context, void *pointer)
{
	MallocChunk *chunk = CHUNK_OF(pointer);

	dlist_delete(&chunk->node);
	context->mem_allocated -= chunk->size;
	free(chunk);
}

static void *
malloc_context_realloc(MemoryContext context, void *pointer, Size size)
{
	MallocChunk *old = CHUNK_OF(pointer);
	void	   *copy = malloc_context_alloc(context, size);

	if (copy == NULL)
		return NULL;
	memcpy(copy, pointer, Min(old->size, size));
	malloc_context_free(context, pointer);
	return copy;
}

static void
malloc_context_reset(MemoryContext context)
{
	MallocContext *set = (MallocContext *) context;
	dlist_mutable_iter iter;

	dlist_foreach_modify(iter, &set->chunks)
	{
		dlist_delete(iter.cur);
		free(dlist_container(MallocChunk, node, iter.cur));
	}
	context->mem_allocated = 0;
}

static void
malloc_context_delete(MemoryContext context)
{
	malloc_context_reset(context);
	free(context);
}

static Size
malloc_context_chunk_space(MemoryContext context, void *pointer)
{
	return CHUNK_OF(pointer)->size + sizeof(MallocChunk);
}

static bool
malloc_context_is_empty(MemoryContext context)
{
	return dlist_is_empty(&((MallocContext *) context)->chunks);
}

static void
malloc_context_stats(MemoryContext context, MemoryStatsPrintFunc printfunc,
					 void *passthru, MemoryContextCounters *totals,
					 bool print_to_stderr)
{
	if (totals)
		totals->totalspace += context->mem_allocated;
}

#ifdef MEMORY_CONTEXT_CHECKING
static void
malloc_context_check(MemoryContext context)
{
}
#endif

static const MemoryContextMethods malloc_context_methods = {
	malloc_context_alloc,
	malloc_context_free,
	malloc_context_realloc,
	malloc_context_reset,
	malloc_context_delete,
	malloc_context_chunk_space,
	malloc_context_is_empty,
	malloc_context_stats
#ifdef MEMORY_CONTEXT_CHECKING
	,malloc_context_check
#endif
};

/* A new MallocContext under parent. */
MemoryContext
MallocContextCreate(MemoryContext parent, const char *name)
{
	MallocContext *set = calloc(1, sizeof(MallocContext));

	if (set == NULL)
		elog(ERROR, "out of memory");
	dlist_init(&set->chunks);
	MemoryContextCreate(&set->header, T_AllocSetContext, &malloc_context_methods,
						parent, name);
	return &set->header;
}
