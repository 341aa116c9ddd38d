/*
 * phone_lib.cpp — libphonenumber behind a C interface (phone_lib.h).
 *
 * The PhoneNumberUtil singleton is created on first use and lives as long
 * as the backend; its logger is replaced by a NullLogger so that garbage
 * input does not write to the server log. The offline geocoder loads its
 * data lazily, only when phone_parse first asks for a location, because
 * phone_e164 (the hot path of every send) never needs it.
 *
 * Nothing here may throw into C or palloc: every entry point catches all
 * exceptions and returns PHONE_LIB_ERROR, and copies results into the
 * caller's fixed-size buffers (truncating safely).
 */
#include "phone_lib.h"

#include <cstring>
#include <list>
#include <memory>
#include <set>
#include <string>

#include <phonenumbers/geocoding/phonenumber_offline_geocoder.h>
#include <phonenumbers/logger.h>
#include <phonenumbers/phonenumber.pb.h>
#include <phonenumbers/phonenumberutil.h>
#include <unicode/locid.h>
#include <unicode/unistr.h>

using i18n::phonenumbers::NullLogger;
using i18n::phonenumbers::PhoneNumber;
using i18n::phonenumbers::PhoneNumberOfflineGeocoder;
using i18n::phonenumbers::PhoneNumberUtil;

namespace
{

const PhoneNumberUtil *
util()
{
	static const PhoneNumberUtil *instance = []() {
		PhoneNumberUtil *u = PhoneNumberUtil::GetInstance();

		u->SetLogger(new NullLogger());	/* owned by the library */
		return u;
	}();
	return instance;
}

const PhoneNumberOfflineGeocoder *
geocoder()
{
	static std::unique_ptr<PhoneNumberOfflineGeocoder> instance(new PhoneNumberOfflineGeocoder());

	return instance.get();
}

void
copy_out(const std::string &s, char *out, size_t outlen)
{
	size_t		n;

	if (outlen == 0)
		return;
	n = s.size() < outlen - 1 ? s.size() : outlen - 1;
	/* When truncating, do not cut a UTF-8 sequence in half. */
	while (n < s.size() && n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80)
		n--;
	memcpy(out, s.data(), n);
	out[n] = '\0';
}

const char *
line_type_name(PhoneNumberUtil::PhoneNumberType type)
{
	switch (type)
	{
		case PhoneNumberUtil::FIXED_LINE:
			return "fixed_line";
		case PhoneNumberUtil::MOBILE:
			return "mobile";
		case PhoneNumberUtil::FIXED_LINE_OR_MOBILE:
			return "fixed_line_or_mobile";
		case PhoneNumberUtil::TOLL_FREE:
			return "toll_free";
		case PhoneNumberUtil::PREMIUM_RATE:
			return "premium_rate";
		case PhoneNumberUtil::SHARED_COST:
			return "shared_cost";
		case PhoneNumberUtil::VOIP:
			return "voip";
		case PhoneNumberUtil::PERSONAL_NUMBER:
			return "personal_number";
		case PhoneNumberUtil::PAGER:
			return "pager";
		case PhoneNumberUtil::UAN:
			return "uan";
		case PhoneNumberUtil::VOICEMAIL:
			return "voicemail";
		default:
			return "unknown";
	}
}

/*
 * Parse and validate; true when number is a valid phone number. Valid means
 * libphonenumber's IsValidNumber and at most 15 digits in all (E.164's own
 * limit): libphonenumber accepts some longer numbers (German ones of 16 or
 * 17 digits), which no E.164 column here could hold.
 */
bool
parse_valid(const char *number, const char *region, PhoneNumber *parsed)
{
	const PhoneNumberUtil *u = util();
	std::string default_region = (region && *region) ? region : "ZZ";
	std::string e164;

	if (u->Parse(number, default_region, parsed) != PhoneNumberUtil::NO_PARSING_ERROR)
		return false;
	if (!u->IsValidNumber(*parsed))
		return false;
	u->Format(*parsed, PhoneNumberUtil::E164, &e164);
	return e164.size() <= 16;	/* "+" and 15 digits */
}

/*
 * A Moroccan number already in E.164 form: "+212" and nine digits, the first
 * not 0. Parse() can only read it as country code 212 and the digits after
 * it (Morocco's national prefix is "0", so a number starting 1-9 has nothing
 * to strip), so its ~8 us of ICU regular expressions are skipped; validity
 * is still decided by the library's metadata (valid_in_any_region). This is
 * the form nearly every send uses: a 10,000-message bulk spent most of its
 * time in Parse(). The regression suite checks it agrees with Parse().
 */
bool
moroccan_e164(const char *number, PhoneNumber *parsed)
{
	unsigned long long national = 0;

	if (strncmp(number, "+212", 4) != 0 || number[4] < '1' || number[4] > '9')
		return false;
	for (int i = 4; i < 13; i++)
	{
		if (number[i] < '0' || number[i] > '9')
			return false;
		national = national * 10 + (number[i] - '0');
	}
	if (number[13] != '\0')
		return false;
	parsed->set_country_code(212);
	parsed->set_national_number(national);
	return true;
}

/*
 * IsValidNumber() for a number of country code 212, computed as "valid for
 * one of the regions of 212" (MA, then EH): the same answer, but
 * IsValidNumber first finds the region by classifying the number against
 * every region's patterns and then classifies it again for that region.
 */
bool
valid_in_any_region(const PhoneNumber &number)
{
	static const std::list<std::string> regions = []() {
		std::list<std::string> r;

		util()->GetRegionCodesForCountryCallingCode(212, &r);
		return r;
	}();

	for (const std::string &region : regions)
		if (util()->IsValidNumberForRegion(number, region))
			return true;
	return false;
}

}								/* namespace */

extern "C" int
EnvoismsPhoneE164(const char *number, const char *region, char e164[PHONE_E164_SIZE])
{
	try
	{
		PhoneNumber parsed;
		std::string out;

		e164[0] = '\0';
		if (moroccan_e164(number, &parsed))
		{
			if (valid_in_any_region(parsed))
			{
				copy_out(number, e164, PHONE_E164_SIZE);
				return PHONE_LIB_VALID;
			}
			parsed.Clear();
		}
		if (!parse_valid(number, region, &parsed))
			return PHONE_LIB_INVALID;
		util()->Format(parsed, PhoneNumberUtil::E164, &out);
		copy_out(out, e164, PHONE_E164_SIZE);
		return PHONE_LIB_VALID;
	}
	catch (...)
	{
		return PHONE_LIB_ERROR;
	}
}

extern "C" int
EnvoismsPhoneParse(const char *number, const char *region, EnvoismsPhoneInfo *info)
{
	try
	{
		const PhoneNumberUtil *u = util();
		PhoneNumber parsed;
		std::string s;

		memset(info, 0, sizeof(*info));
		if (!parse_valid(number, region, &parsed))
			return PHONE_LIB_INVALID;

		u->Format(parsed, PhoneNumberUtil::E164, &s);
		copy_out(s, info->e164, sizeof(info->e164));

		copy_out(std::to_string(parsed.country_code()), info->country_prefix,
				 sizeof(info->country_prefix));

		s.clear();
		u->GetRegionCodeForNumber(parsed, &s);
		if (s == "ZZ" || s == "001")
			s.clear();			/* non-geographic numbers have no ISO region */
		copy_out(s, info->region, sizeof(info->region));

		copy_out(line_type_name(u->GetNumberType(parsed)), info->line_type,
				 sizeof(info->line_type));

		s.clear();
		u->Format(parsed, PhoneNumberUtil::NATIONAL, &s);
		u->NormalizeDigitsOnly(&s);
		copy_out(s, info->national, sizeof(info->national));

		s = geocoder()->GetDescriptionForNumber(parsed, icu::Locale::getEnglish());
		copy_out(s, info->location, sizeof(info->location));
		return PHONE_LIB_VALID;
	}
	catch (...)
	{
		return PHONE_LIB_ERROR;
	}
}

extern "C" int
EnvoismsPhoneCountryName(const char *region, char *out, size_t outlen)
{
	try
	{
		static const std::set<std::string> supported = []() {
			std::set<std::string> regions;

			util()->GetSupportedRegions(&regions);
			return regions;
		}();
		icu::UnicodeString name;
		std::string utf8;

		if (outlen > 0)
			out[0] = '\0';
		if (region == NULL || supported.count(region) == 0)
			return PHONE_LIB_INVALID;
		icu::Locale("", region).getDisplayCountry(icu::Locale::getEnglish(), name);
		name.toUTF8String(utf8);
		if (utf8.empty() || utf8 == region)
			return PHONE_LIB_INVALID;
		copy_out(utf8, out, outlen);
		return PHONE_LIB_VALID;
	}
	catch (...)
	{
		return PHONE_LIB_ERROR;
	}
}
