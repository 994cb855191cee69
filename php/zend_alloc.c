/*
 * PHP 8.2's Zend/zend_alloc.c, replaced: the engine's memory manager API (zend_alloc.h of PHP 8.2)
 * served by libzend_alloc.
 *
 * `make php` copies this file over Zend/zend_alloc.c of a PHP 8.2 source tree and links the static
 * library, whose exports are renamed with the prefix `zend_alloc_lib_` (objcopy, see php/php.sh):
 * the library keeps PHP 5.3's API and one ABI with location parameters, while PHP 8's header
 * declares the same names with its own signatures. The size-specialised entry points of release
 * builds (`_emalloc_8` ... `_efree_huge`) are not renamed: the library exports them with PHP 8's
 * release ABI and the engine calls them directly.
 *
 * What is bridged here, and nowhere else:
 *  - location parameters: release builds have none (NULL, 0 are passed), debug builds relay them;
 *  - `_erealloc` has no `allow_failure` in PHP 8; `bool` parameters are widened to `int`;
 *  - fatal errors go through the library's error handler to zend_error_noreturn() and the bailout,
 *    as zend_mm_safe_error() does; debug builds name the C location in the limit message;
 *  - zend_mm_startup_ex()/zend_mm_get_storage() take PHP 8's chunk handlers (zend_mm_handlers),
 *    which are served to the library as a PHP 5.3 storage;
 *  - zend_mm_is_custom_heap() looks at the current heap, whatever its argument (as PHP 8 does);
 *  - debug builds switch the library's block tracking on and send its leak reports to PHP's
 *    message dispatcher.
 * Works for NTS and ZTS, debug and release builds: the library keeps one heap per thread itself.
 */

#include "zend.h"
#include "zend_alloc.h"
#include "zend_globals.h"

#include <stdio.h>
#include <string.h>

/* Release builds' zend_alloc.h makes _emalloc() a macro that picks _emalloc_<size>() for constant
 * sizes; the function itself is defined here. */
#undef _emalloc

/* ---- The library, under its renamed symbols (its own header cannot be included with PHP's: the
 * two declare the same names differently). Types are the library's C types. ---- */

typedef struct zend_alloc_lib_segment {
	size_t size;
	struct zend_alloc_lib_segment *next_segment;
} zend_alloc_lib_segment;

typedef struct zend_alloc_lib_storage zend_alloc_lib_storage;

typedef struct zend_alloc_lib_mem_handlers {
	const char *name;
	zend_alloc_lib_storage *(*init)(void *params);
	void (*dtor)(zend_alloc_lib_storage *storage);
	void (*compact)(zend_alloc_lib_storage *storage);
	zend_alloc_lib_segment *(*_alloc)(zend_alloc_lib_storage *storage, size_t size);
	zend_alloc_lib_segment *(*_realloc)(zend_alloc_lib_storage *storage, zend_alloc_lib_segment *segment, size_t size);
	void (*_free)(zend_alloc_lib_storage *storage, zend_alloc_lib_segment *segment);
} zend_alloc_lib_mem_handlers;

struct zend_alloc_lib_storage {
	const zend_alloc_lib_mem_handlers *handlers;
	void *data;
};

typedef void (*zend_alloc_lib_error_handler)(int type, const char *file, uint32_t line, const char *message);

#define LIB_LOCATION_D const char *file, uint32_t line, const char *orig_file, uint32_t orig_line

void *zend_alloc_lib__emalloc(size_t size, LIB_LOCATION_D);
void *zend_alloc_lib__safe_emalloc(size_t nmemb, size_t size, size_t offset, LIB_LOCATION_D);
void zend_alloc_lib__efree(void *ptr, LIB_LOCATION_D);
void *zend_alloc_lib__ecalloc(size_t nmemb, size_t size, LIB_LOCATION_D);
void *zend_alloc_lib__erealloc(void *ptr, size_t size, int allow_failure, LIB_LOCATION_D);
void *zend_alloc_lib__erealloc2(void *ptr, size_t size, size_t copy_size, LIB_LOCATION_D);
void *zend_alloc_lib__safe_erealloc(void *ptr, size_t nmemb, size_t size, size_t offset, LIB_LOCATION_D);
char *zend_alloc_lib__estrdup(const char *s, LIB_LOCATION_D);
char *zend_alloc_lib__estrndup(const char *s, size_t length, LIB_LOCATION_D);
size_t zend_alloc_lib__zend_mem_block_size(void *ptr, LIB_LOCATION_D);
void *zend_alloc_lib___zend_malloc(size_t len);
void *zend_alloc_lib___zend_calloc(size_t nmemb, size_t len);
void *zend_alloc_lib___zend_realloc(void *p, size_t len);
char *zend_alloc_lib___zend_strdup(const char *s);
char *zend_alloc_lib_zend_strndup(const char *s, size_t length);
void *zend_alloc_lib__safe_malloc(size_t nmemb, size_t size, size_t offset);
void *zend_alloc_lib__safe_realloc(void *ptr, size_t nmemb, size_t size, size_t offset);
void *zend_alloc_lib__zend_mm_alloc(void *heap, size_t size, LIB_LOCATION_D);
void zend_alloc_lib__zend_mm_free(void *heap, void *p, LIB_LOCATION_D);
void *zend_alloc_lib__zend_mm_realloc(void *heap, void *p, size_t size, LIB_LOCATION_D);
void *zend_alloc_lib__zend_mm_realloc2(void *heap, void *p, size_t size, size_t copy_size, LIB_LOCATION_D);
size_t zend_alloc_lib__zend_mm_block_size(void *heap, void *p, LIB_LOCATION_D);
void zend_alloc_lib_start_memory_manager(void);
void zend_alloc_lib_shutdown_memory_manager(int silent, int full_shutdown);
int zend_alloc_lib_is_zend_mm(void);
int zend_alloc_lib_is_zend_ptr(const void *ptr);
size_t zend_alloc_lib_zend_memory_usage(int real_usage);
size_t zend_alloc_lib_zend_memory_peak_usage(int real_usage);
void zend_alloc_lib_zend_memory_reset_peak_usage(void);
int zend_alloc_lib_zend_set_memory_limit(size_t memory_limit);
int zend_alloc_lib_zend_alloc_in_memory_limit_error_reporting(void);
void *zend_alloc_lib_zend_mm_startup(void);
void *zend_alloc_lib_zend_mm_startup_ex(const zend_alloc_lib_mem_handlers *handlers, size_t block_size,
                                        size_t reserve_size, int internal, void *params);
void zend_alloc_lib_zend_mm_shutdown(void *heap, int full_shutdown, int silent);
void *zend_alloc_lib_zend_mm_set_heap(void *heap);
void *zend_alloc_lib_zend_mm_get_heap(void);
zend_alloc_lib_storage *zend_alloc_lib_zend_mm_get_storage(void *heap);
size_t zend_alloc_lib_zend_mm_gc(void *heap);
int zend_alloc_lib_zend_mm_is_custom_heap(void *heap);
void zend_alloc_lib_zend_mm_set_custom_handlers(void *heap, void *(*m)(size_t), void (*f)(void *),
                                                void *(*r)(void *, size_t));
void zend_alloc_lib_zend_mm_get_custom_handlers(void *heap, void *(**m)(size_t), void (**f)(void *),
                                                void *(**r)(void *, size_t));
zend_alloc_lib_error_handler zend_alloc_lib_zend_mm_set_error_handler(zend_alloc_lib_error_handler handler);

/* The library's leak report (PHP 5.3's zend_leak_info field order) and its tracking switch. */
typedef struct {
	void *addr;
	size_t size;
	const char *filename;
	uint32_t lineno;
	const char *orig_filename;
	uint32_t orig_lineno;
} zend_alloc_lib_leak_info;
typedef void (*zend_alloc_lib_message_handler)(long message, const void *data);
zend_alloc_lib_message_handler zend_alloc_lib_zend_mm_set_message_handler(zend_alloc_lib_message_handler handler);
int zend_alloc_lib_zend_mm_set_tracking(void *heap, int on);

/* What the library gets for the caller's location: the relayed pair in debug builds, nothing in
 * release builds (which have no location parameters). */
#if ZEND_DEBUG
# define LOC __zend_filename, __zend_lineno, __zend_orig_filename, __zend_orig_lineno
#else
# define LOC NULL, 0, NULL, 0
#endif

/* ---- Fatal errors: PHP 8's zend_mm_safe_error() ---- */

/* The library has already suspended the limit for limit and out-of-memory errors (and re-arms it
 * once the bailout has unwound past the failed call). The error is raised as E_ERROR in the script's
 * location; a nested bailout while reporting is absorbed, then the request bails out. */
static ZEND_COLD ZEND_NORETURN void php_mm_error(int type, const char *file, uint32_t line, const char *message)
{
	/* Debug builds name the C location of the allocation in the limit message: "Allowed memory
	 * size of N bytes exhausted at file:line (tried to allocate M bytes)". */
	const char *tried = NULL;
	static const char limit_prefix[] = "Allowed memory size of ";
	if (ZEND_DEBUG && strncmp(message, limit_prefix, sizeof(limit_prefix) - 1) == 0) {
		tried = strstr(message, " (tried to allocate ");
	}
	(void) type;
	zend_try {
		if (tried) {
			zend_error_noreturn(E_ERROR, "%.*s at %s:%u%s", (int) (tried - message), message,
				file ? file : "Unknown", line, tried);
		} else {
			zend_error_noreturn(E_ERROR, "%s", message);
		}
	} zend_catch {
	} zend_end_try();
	zend_bailout();
}

/* ---- Allocation ---- */

ZEND_API void *ZEND_FASTCALL _emalloc(size_t size ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC)
{
	return zend_alloc_lib__emalloc(size, LOC);
}

ZEND_API void *ZEND_FASTCALL _safe_emalloc(size_t nmemb, size_t size, size_t offset ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC)
{
	return zend_alloc_lib__safe_emalloc(nmemb, size, offset, LOC);
}

ZEND_API void ZEND_FASTCALL _efree(void *ptr ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC)
{
	zend_alloc_lib__efree(ptr, LOC);
}

ZEND_API void *ZEND_FASTCALL _ecalloc(size_t nmemb, size_t size ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC)
{
	return zend_alloc_lib__ecalloc(nmemb, size, LOC);
}

ZEND_API void *ZEND_FASTCALL _erealloc(void *ptr, size_t size ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC)
{
	return zend_alloc_lib__erealloc(ptr, size, 0, LOC);
}

ZEND_API void *ZEND_FASTCALL _erealloc2(void *ptr, size_t size, size_t copy_size ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC)
{
	return zend_alloc_lib__erealloc2(ptr, size, copy_size, LOC);
}

ZEND_API void *ZEND_FASTCALL _safe_erealloc(void *ptr, size_t nmemb, size_t size, size_t offset ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC)
{
	return zend_alloc_lib__safe_erealloc(ptr, nmemb, size, offset, LOC);
}

ZEND_API char *ZEND_FASTCALL _estrdup(const char *s ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC)
{
	return zend_alloc_lib__estrdup(s, LOC);
}

ZEND_API char *ZEND_FASTCALL _estrndup(const char *s, size_t length ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC)
{
	return zend_alloc_lib__estrndup(s, length, LOC);
}

ZEND_API size_t ZEND_FASTCALL _zend_mem_block_size(void *ptr ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC)
{
	return zend_alloc_lib__zend_mem_block_size(ptr, LOC);
}

/* ---- Persistent memory (the C library's, as in PHP) ---- */

ZEND_API void *__zend_malloc(size_t len)
{
	return zend_alloc_lib___zend_malloc(len);
}

ZEND_API void *__zend_calloc(size_t nmemb, size_t len)
{
	return zend_alloc_lib___zend_calloc(nmemb, len);
}

ZEND_API void *__zend_realloc(void *p, size_t len)
{
	return zend_alloc_lib___zend_realloc(p, len);
}

ZEND_API char *__zend_strdup(const char *s)
{
	return zend_alloc_lib___zend_strdup(s);
}

ZEND_API char *ZEND_FASTCALL zend_strndup(const char *s, size_t length)
{
	return zend_alloc_lib_zend_strndup(s, length);
}

ZEND_API void *ZEND_FASTCALL _safe_malloc(size_t nmemb, size_t size, size_t offset)
{
	return zend_alloc_lib__safe_malloc(nmemb, size, offset);
}

ZEND_API void *ZEND_FASTCALL _safe_realloc(void *ptr, size_t nmemb, size_t size, size_t offset)
{
	return zend_alloc_lib__safe_realloc(ptr, nmemb, size, offset);
}

/* ---- Explicit heaps ---- */

ZEND_API void *ZEND_FASTCALL _zend_mm_alloc(zend_mm_heap *heap, size_t size ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC)
{
	return zend_alloc_lib__zend_mm_alloc(heap, size, LOC);
}

ZEND_API void ZEND_FASTCALL _zend_mm_free(zend_mm_heap *heap, void *p ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC)
{
	zend_alloc_lib__zend_mm_free(heap, p, LOC);
}

ZEND_API void *ZEND_FASTCALL _zend_mm_realloc(zend_mm_heap *heap, void *p, size_t size ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC)
{
	return zend_alloc_lib__zend_mm_realloc(heap, p, size, LOC);
}

ZEND_API void *ZEND_FASTCALL _zend_mm_realloc2(zend_mm_heap *heap, void *p, size_t size, size_t copy_size ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC)
{
	return zend_alloc_lib__zend_mm_realloc2(heap, p, size, copy_size, LOC);
}

ZEND_API size_t ZEND_FASTCALL _zend_mm_block_size(zend_mm_heap *heap, void *p ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC)
{
	return zend_alloc_lib__zend_mm_block_size(heap, p, LOC);
}

ZEND_API zend_mm_heap *zend_mm_startup(void)
{
	return zend_alloc_lib_zend_mm_startup();
}

ZEND_API void zend_mm_shutdown(zend_mm_heap *heap, bool full_shutdown, bool silent)
{
	zend_alloc_lib_zend_mm_shutdown(heap, full_shutdown, silent);
}

ZEND_API zend_mm_heap *zend_mm_set_heap(zend_mm_heap *new_heap)
{
	return zend_alloc_lib_zend_mm_set_heap(new_heap);
}

ZEND_API zend_mm_heap *zend_mm_get_heap(void)
{
	return zend_alloc_lib_zend_mm_get_heap();
}

ZEND_API size_t zend_mm_gc(zend_mm_heap *heap)
{
	return zend_alloc_lib_zend_mm_gc(heap);
}

/* ---- The current heap (AG(mm_heap) in PHP) ---- */

#if ZEND_DEBUG
/* Leak reports go to PHP's message dispatcher, as zend_mm_check_leaks() sends them: the same
 * message numbers, PHP 8's zend_leak_info (its fields in another order than the library's). */
static void php_mm_message(long message, const void *data)
{
	if (message == ZMSG_MEMORY_LEAK_DETECTED) {
		const zend_alloc_lib_leak_info *lib = data;
		zend_leak_info leak;
		leak.addr = lib->addr;
		leak.size = lib->size;
		leak.filename = lib->filename;
		leak.orig_filename = lib->orig_filename;
		leak.lineno = lib->lineno;
		leak.orig_lineno = lib->orig_lineno;
		zend_message_dispatcher(message, &leak);
		return;
	}
	zend_message_dispatcher(message, data);
}
#endif

ZEND_API void start_memory_manager(void)
{
	zend_alloc_lib_zend_mm_set_error_handler(php_mm_error);
	zend_alloc_lib_start_memory_manager();
#if ZEND_DEBUG
	/* PHP's debug build records each block's location and reports leaks at request end: the
	 * library's block tracking does both. */
	zend_alloc_lib_zend_mm_set_message_handler(php_mm_message);
	zend_alloc_lib_zend_mm_set_tracking(NULL, 1);
#endif
}

ZEND_API void shutdown_memory_manager(bool silent, bool full_shutdown)
{
	zend_alloc_lib_shutdown_memory_manager(silent, full_shutdown);
}

ZEND_API bool is_zend_mm(void)
{
	return zend_alloc_lib_is_zend_mm() != 0;
}

ZEND_API bool is_zend_ptr(const void *ptr)
{
	return zend_alloc_lib_is_zend_ptr(ptr) != 0;
}

ZEND_API size_t zend_memory_usage(bool real_usage)
{
	return zend_alloc_lib_zend_memory_usage(real_usage);
}

ZEND_API size_t zend_memory_peak_usage(bool real_usage)
{
	return zend_alloc_lib_zend_memory_peak_usage(real_usage);
}

ZEND_API void zend_memory_reset_peak_usage(void)
{
	zend_alloc_lib_zend_memory_reset_peak_usage();
}

ZEND_API zend_result zend_set_memory_limit(size_t memory_limit)
{
	return zend_alloc_lib_zend_set_memory_limit(memory_limit) == 0 ? SUCCESS : FAILURE;
}

ZEND_API bool zend_alloc_in_memory_limit_error_reporting(void)
{
	return zend_alloc_lib_zend_alloc_in_memory_limit_error_reporting() != 0;
}

/* ---- Custom handlers ---- */

ZEND_API bool zend_mm_is_custom_heap(zend_mm_heap *new_heap)
{
	(void) new_heap;
	return zend_alloc_lib_zend_mm_is_custom_heap(NULL) != 0;
}

ZEND_API void zend_mm_set_custom_handlers(zend_mm_heap *heap, void *(*_malloc)(size_t), void (*_free)(void *),
                                          void *(*_realloc)(void *, size_t))
{
	zend_alloc_lib_zend_mm_set_custom_handlers(heap, _malloc, _free, _realloc);
}

ZEND_API void zend_mm_get_custom_handlers(zend_mm_heap *heap, void *(**_malloc)(size_t), void (**_free)(void *),
                                          void *(**_realloc)(void *, size_t))
{
	zend_alloc_lib_zend_mm_get_custom_handlers(heap, _malloc, _free, _realloc);
}

#if ZEND_DEBUG
/* Debug handlers take locations; the library calls custom handlers without them, so these go
 * through trampolines that pass none. One set per process (phpdbg, the only user, has one heap). */
static void *(*debug_malloc)(size_t ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC);
static void (*debug_free)(void *ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC);
static void *(*debug_realloc)(void *, size_t ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC);

static void *debug_malloc_trampoline(size_t size)
{
	return debug_malloc(size ZEND_FILE_LINE_EMPTY_CC ZEND_FILE_LINE_EMPTY_CC);
}

static void debug_free_trampoline(void *ptr)
{
	debug_free(ptr ZEND_FILE_LINE_EMPTY_CC ZEND_FILE_LINE_EMPTY_CC);
}

static void *debug_realloc_trampoline(void *ptr, size_t size)
{
	return debug_realloc(ptr, size ZEND_FILE_LINE_EMPTY_CC ZEND_FILE_LINE_EMPTY_CC);
}

ZEND_API void zend_mm_set_custom_debug_handlers(zend_mm_heap *heap,
                                                void *(*_malloc)(size_t ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC),
                                                void (*_free)(void *ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC),
                                                void *(*_realloc)(void *, size_t ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC))
{
	debug_malloc = _malloc;
	debug_free = _free;
	debug_realloc = _realloc;
	zend_alloc_lib_zend_mm_set_custom_handlers(heap, debug_malloc_trampoline, debug_free_trampoline,
		debug_realloc_trampoline);
}
#endif

/* ---- PHP 8 storages (zend_mm_handlers: chunk alloc/free/truncate/extend) as a 5.3 storage ---- */

typedef struct {
	zend_alloc_lib_storage lib;
	zend_mm_storage php; /* PHP 8's view: the handlers and a copy of the caller's data after it */
} chunk_storage;

typedef struct {
	const zend_mm_handlers *handlers;
	void *data;
	size_t data_size;
} chunk_storage_params;

static zend_alloc_lib_storage *chunk_storage_init(void *params)
{
	const chunk_storage_params *p = params;
	chunk_storage *s = calloc(1, sizeof(chunk_storage) + p->data_size);
	if (!s) {
		return NULL;
	}
	memcpy((zend_mm_handlers *) &s->php.handlers, p->handlers, sizeof(zend_mm_handlers));
	s->php.data = NULL;
	if (p->data) {
		s->php.data = s + 1;
		memcpy(s->php.data, p->data, p->data_size);
	}
	return &s->lib;
}

static void chunk_storage_dtor(zend_alloc_lib_storage *storage)
{
	free(storage);
}

static zend_alloc_lib_segment *chunk_storage_alloc(zend_alloc_lib_storage *storage, size_t size)
{
	chunk_storage *s = (chunk_storage *) storage;
	return s->php.handlers.chunk_alloc(&s->php, size, ZEND_MM_CHUNK_SIZE);
}

static void chunk_storage_free(zend_alloc_lib_storage *storage, zend_alloc_lib_segment *segment)
{
	chunk_storage *s = (chunk_storage *) storage;
	s->php.handlers.chunk_free(&s->php, segment, segment->size);
}

/* In place through chunk_truncate/chunk_extend where the storage has them, else move. */
static zend_alloc_lib_segment *chunk_storage_realloc(zend_alloc_lib_storage *storage,
                                                     zend_alloc_lib_segment *segment, size_t size)
{
	chunk_storage *s = (chunk_storage *) storage;
	size_t old_size = segment->size;
	if (size <= old_size && s->php.handlers.chunk_truncate
	 && s->php.handlers.chunk_truncate(&s->php, segment, old_size, size)) {
		return segment;
	}
	if (size > old_size && s->php.handlers.chunk_extend
	 && s->php.handlers.chunk_extend(&s->php, segment, old_size, size)) {
		return segment;
	}
	zend_alloc_lib_segment *moved = s->php.handlers.chunk_alloc(&s->php, size, ZEND_MM_CHUNK_SIZE);
	if (moved) {
		memcpy(moved, segment, old_size < size ? old_size : size);
		s->php.handlers.chunk_free(&s->php, segment, old_size);
	}
	return moved;
}

static const zend_alloc_lib_mem_handlers chunk_storage_handlers = {
	"php8_chunks",
	chunk_storage_init,
	chunk_storage_dtor,
	NULL, /* PHP 8's handlers have nothing to compact with */
	chunk_storage_alloc,
	chunk_storage_realloc,
	chunk_storage_free,
};

ZEND_API zend_mm_heap *zend_mm_startup_ex(const zend_mm_handlers *handlers, void *data, size_t data_size)
{
	chunk_storage_params params = {handlers, data, data_size};
	if (!handlers || !handlers->chunk_alloc || !handlers->chunk_free) {
		fprintf(stderr, "Can't initialize heap\n");
		return NULL;
	}
	return zend_alloc_lib_zend_mm_startup_ex(&chunk_storage_handlers, ZEND_MM_CHUNK_SIZE, 0, 0, &params);
}

ZEND_API zend_mm_storage *zend_mm_get_storage(zend_mm_heap *heap)
{
	zend_alloc_lib_storage *storage = zend_alloc_lib_zend_mm_get_storage(heap);
	/* Heaps on the built-in storages have none in PHP 8's sense. */
	if (!storage || storage->handlers != &chunk_storage_handlers) {
		return NULL;
	}
	return &((chunk_storage *) storage)->php;
}

#ifdef ZTS
/* The library keeps a heap per thread itself; TSRM only reserves the slot PHP's globals had. */
size_t zend_mm_globals_size(void)
{
	return sizeof(zend_mm_heap *);
}
#endif
