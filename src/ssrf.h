/*
 * ssrf.h — the address guard of webhook deliveries (worker_ssrf.c).
 *
 * A webhook URL is chosen by a customer, so the address a delivery
 * connects to is checked after DNS, in libcurl's open-socket callback,
 * which the curl pool installs on a transfer created with ssrf_guard. The
 * classifier is pure (an address in, a verdict and a reason out) and is
 * also exposed to SQL as envoisms.webhook_address_refusal(inet).
 */
#ifndef ENVOISMS_SSRF_H
#define ENVOISMS_SSRF_H

#include "envoisms.h"

#include <sys/socket.h>
#include <curl/curl.h>

/* Lifts the guard (envoisms.webhook_allow_private, tests only). */
extern bool webhook_allow_private;

/* Whether a connection to this address is allowed for a webhook delivery;
 * when not, reason says why. */
extern bool SsrfAddressAllowed(const struct sockaddr *sa, char *reason, size_t reasonlen);

/* CURLOPT_OPENSOCKETFUNCTION: refuses forbidden addresses (clientp is the
 * HttpTransfer). */
extern curl_socket_t SsrfOpenSocket(void *clientp, curlsocktype purpose, struct curl_sockaddr *address);

#endif							/* ENVOISMS_SSRF_H */
