/*
 * smpp_receipt.h — the text form of an SMPP delivery receipt
 * (SMPP 3.4 appendix B): "id:… sub:… dlvrd:… submit date:… done date:…
 * stat:… err:… text:…". Plain C, no palloc: the SMPP worker calls it on
 * every receipt and envoisms.smpp_parse_receipt exposes it to SQL.
 */
#ifndef ENVOISMS_SMPP_RECEIPT_H
#define ENVOISMS_SMPP_RECEIPT_H

#include <stdbool.h>

#define SMPP_RECEIPT_ID_MAX 64		/* receipted_message_id is C-octet 65 */
#define SMPP_RECEIPT_STAT_MAX 7
#define SMPP_RECEIPT_DATE_MAX 16
#define SMPP_RECEIPT_ERR_MAX 16
#define SMPP_RECEIPT_TEXT_MAX 255

typedef struct SmppReceipt
{
	char		id[SMPP_RECEIPT_ID_MAX + 1];
	int			sub;			/* -1 when absent */
	int			dlvrd;			/* -1 when absent */
	char		submit_date[SMPP_RECEIPT_DATE_MAX + 1];	/* "" when absent */
	char		done_date[SMPP_RECEIPT_DATE_MAX + 1];
	char		stat[SMPP_RECEIPT_STAT_MAX + 1];	/* upper case */
	char		err[SMPP_RECEIPT_ERR_MAX + 1];
	char		text[SMPP_RECEIPT_TEXT_MAX + 1];
	bool		has_text;
} SmppReceipt;

/*
 * Parse len bytes of s (stops at a NUL). Keys are matched case-insensitively
 * at word starts and in any order; id and stat are required. Returns true on
 * success; on failure returns false and points *error at a static sentence
 * saying what is wrong. Never reads outside s[0..len).
 */
extern bool SmppParseReceipt(const char *s, int len, SmppReceipt *receipt,
							 const char **error);

#endif							/* ENVOISMS_SMPP_RECEIPT_H */
