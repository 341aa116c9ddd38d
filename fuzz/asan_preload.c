/*
 * asan_preload.c — preloaded after the ASan runtime into an uninstrumented
 * postgres (scripts/test-suites.sh in sanitizer mode, fuzz/run.sh), so that
 * postgres can start at all.
 *
 * Debian's postgres links libgcrypt (through libsystemd and libldap), whose
 * libgpg-error constructor calls bindtextdomain() before the preloaded ASan
 * runtime has initialised. bindtextdomain() mallocs while holding glibc's
 * gettext lock; that first malloc initialises ASan, whose symbolizer looks
 * up the optional symbol swift_demangle with dlsym(); the failed lookup
 * makes dlerror() translate its message with gettext, which takes the same
 * lock again. The lock is corrupted and the next gettext call hangs forever
 * (postgres hangs in set_pglocale_pgservice before it reads its arguments).
 *
 * Defining swift_demangle makes that dlsym() succeed, so no dlerror() and no
 * nested gettext. ASan then offers Swift names to this function first; it
 * declines every one (NULL), and C and C++ names are demangled as before.
 */
#include <stddef.h>

char	   *swift_demangle(const char *mangled, size_t length, char *out,
						   size_t *outlen, unsigned int flags);

char *
swift_demangle(const char *mangled, size_t length, char *out, size_t *outlen,
			   unsigned int flags)
{
	return NULL;
}
