"""The home region of a new user who names only a country (the seed's register body has no
region): the region that serves that country, by ISO 3166-1 alpha-2 code. A country of no
region here (Brazil, Australia ...) must name its region explicitly."""

from __future__ import annotations

from api.types import Region

__all__ = ["region_of_country"]

_COUNTRIES: dict[Region, frozenset[str]] = {
    Region.NORTH_AMERICA: frozenset(
        "US CA MX GT BZ SV HN NI CR PA CU DO HT JM BS BB TT PR".split()),
    Region.EUROPE: frozenset(
        "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE "
        "GB UK CH NO IS LI AD MC SM VA AL BA ME MK RS MD UA".split()),
    Region.ASIA: frozenset(
        "JP CN KR KP TW HK MO MN IN PK BD LK NP BT MV SG MY ID TH VN PH KH LA MM BN TL "
        "KZ UZ KG TJ TM".split()),
}
_REGION_OF = {country: region for region, countries in _COUNTRIES.items()
              for country in countries}


def region_of_country(country: str) -> Region | None:
    """The region serving `country` (any case), or None when no region here does."""
    return _REGION_OF.get(country.upper())
