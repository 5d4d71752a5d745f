//! Country codes for rule conditions.
//!
//! Didit spells a country three ways in one decision: `issuing_state` is alpha-3 ("ESP"),
//! `ip_country_code` alpha-2 ("ES") and `ip_country` an English name ("Spain"). A condition
//! comparing them must see one spelling, so the decision view turns each into ISO 3166-1
//! alpha-3 with this table (the full ISO list plus common alternative names).

/// `(alpha-2, alpha-3, English short name)` for every ISO 3166-1 country.
#[rustfmt::skip]
const COUNTRIES: &[(&str, &str, &str)] = &[
    ("AD", "AND", "Andorra"), ("AE", "ARE", "United Arab Emirates"), ("AF", "AFG", "Afghanistan"),
    ("AG", "ATG", "Antigua and Barbuda"), ("AI", "AIA", "Anguilla"), ("AL", "ALB", "Albania"),
    ("AM", "ARM", "Armenia"), ("AO", "AGO", "Angola"), ("AQ", "ATA", "Antarctica"),
    ("AR", "ARG", "Argentina"), ("AS", "ASM", "American Samoa"), ("AT", "AUT", "Austria"),
    ("AU", "AUS", "Australia"), ("AW", "ABW", "Aruba"), ("AX", "ALA", "Aland Islands"),
    ("AZ", "AZE", "Azerbaijan"), ("BA", "BIH", "Bosnia and Herzegovina"), ("BB", "BRB", "Barbados"),
    ("BD", "BGD", "Bangladesh"), ("BE", "BEL", "Belgium"), ("BF", "BFA", "Burkina Faso"),
    ("BG", "BGR", "Bulgaria"), ("BH", "BHR", "Bahrain"), ("BI", "BDI", "Burundi"),
    ("BJ", "BEN", "Benin"), ("BL", "BLM", "Saint Barthelemy"), ("BM", "BMU", "Bermuda"),
    ("BN", "BRN", "Brunei Darussalam"), ("BO", "BOL", "Bolivia"), ("BQ", "BES", "Bonaire, Sint Eustatius and Saba"),
    ("BR", "BRA", "Brazil"), ("BS", "BHS", "Bahamas"), ("BT", "BTN", "Bhutan"),
    ("BV", "BVT", "Bouvet Island"), ("BW", "BWA", "Botswana"), ("BY", "BLR", "Belarus"),
    ("BZ", "BLZ", "Belize"), ("CA", "CAN", "Canada"), ("CC", "CCK", "Cocos (Keeling) Islands"),
    ("CD", "COD", "Democratic Republic of the Congo"), ("CF", "CAF", "Central African Republic"),
    ("CG", "COG", "Congo"), ("CH", "CHE", "Switzerland"), ("CI", "CIV", "Cote d'Ivoire"),
    ("CK", "COK", "Cook Islands"), ("CL", "CHL", "Chile"), ("CM", "CMR", "Cameroon"),
    ("CN", "CHN", "China"), ("CO", "COL", "Colombia"), ("CR", "CRI", "Costa Rica"),
    ("CU", "CUB", "Cuba"), ("CV", "CPV", "Cabo Verde"), ("CW", "CUW", "Curacao"),
    ("CX", "CXR", "Christmas Island"), ("CY", "CYP", "Cyprus"), ("CZ", "CZE", "Czechia"),
    ("DE", "DEU", "Germany"), ("DJ", "DJI", "Djibouti"), ("DK", "DNK", "Denmark"),
    ("DM", "DMA", "Dominica"), ("DO", "DOM", "Dominican Republic"), ("DZ", "DZA", "Algeria"),
    ("EC", "ECU", "Ecuador"), ("EE", "EST", "Estonia"), ("EG", "EGY", "Egypt"),
    ("EH", "ESH", "Western Sahara"), ("ER", "ERI", "Eritrea"), ("ES", "ESP", "Spain"),
    ("ET", "ETH", "Ethiopia"), ("FI", "FIN", "Finland"), ("FJ", "FJI", "Fiji"),
    ("FK", "FLK", "Falkland Islands"), ("FM", "FSM", "Micronesia"), ("FO", "FRO", "Faroe Islands"),
    ("FR", "FRA", "France"), ("GA", "GAB", "Gabon"), ("GB", "GBR", "United Kingdom"),
    ("GD", "GRD", "Grenada"), ("GE", "GEO", "Georgia"), ("GF", "GUF", "French Guiana"),
    ("GG", "GGY", "Guernsey"), ("GH", "GHA", "Ghana"), ("GI", "GIB", "Gibraltar"),
    ("GL", "GRL", "Greenland"), ("GM", "GMB", "Gambia"), ("GN", "GIN", "Guinea"),
    ("GP", "GLP", "Guadeloupe"), ("GQ", "GNQ", "Equatorial Guinea"), ("GR", "GRC", "Greece"),
    ("GS", "SGS", "South Georgia and the South Sandwich Islands"), ("GT", "GTM", "Guatemala"),
    ("GU", "GUM", "Guam"), ("GW", "GNB", "Guinea-Bissau"), ("GY", "GUY", "Guyana"),
    ("HK", "HKG", "Hong Kong"), ("HM", "HMD", "Heard Island and McDonald Islands"),
    ("HN", "HND", "Honduras"), ("HR", "HRV", "Croatia"), ("HT", "HTI", "Haiti"),
    ("HU", "HUN", "Hungary"), ("ID", "IDN", "Indonesia"), ("IE", "IRL", "Ireland"),
    ("IL", "ISR", "Israel"), ("IM", "IMN", "Isle of Man"), ("IN", "IND", "India"),
    ("IO", "IOT", "British Indian Ocean Territory"), ("IQ", "IRQ", "Iraq"), ("IR", "IRN", "Iran"),
    ("IS", "ISL", "Iceland"), ("IT", "ITA", "Italy"), ("JE", "JEY", "Jersey"),
    ("JM", "JAM", "Jamaica"), ("JO", "JOR", "Jordan"), ("JP", "JPN", "Japan"),
    ("KE", "KEN", "Kenya"), ("KG", "KGZ", "Kyrgyzstan"), ("KH", "KHM", "Cambodia"),
    ("KI", "KIR", "Kiribati"), ("KM", "COM", "Comoros"), ("KN", "KNA", "Saint Kitts and Nevis"),
    ("KP", "PRK", "North Korea"), ("KR", "KOR", "South Korea"), ("KW", "KWT", "Kuwait"),
    ("KY", "CYM", "Cayman Islands"), ("KZ", "KAZ", "Kazakhstan"), ("LA", "LAO", "Laos"),
    ("LB", "LBN", "Lebanon"), ("LC", "LCA", "Saint Lucia"), ("LI", "LIE", "Liechtenstein"),
    ("LK", "LKA", "Sri Lanka"), ("LR", "LBR", "Liberia"), ("LS", "LSO", "Lesotho"),
    ("LT", "LTU", "Lithuania"), ("LU", "LUX", "Luxembourg"), ("LV", "LVA", "Latvia"),
    ("LY", "LBY", "Libya"), ("MA", "MAR", "Morocco"), ("MC", "MCO", "Monaco"),
    ("MD", "MDA", "Moldova"), ("ME", "MNE", "Montenegro"), ("MF", "MAF", "Saint Martin"),
    ("MG", "MDG", "Madagascar"), ("MH", "MHL", "Marshall Islands"), ("MK", "MKD", "North Macedonia"),
    ("ML", "MLI", "Mali"), ("MM", "MMR", "Myanmar"), ("MN", "MNG", "Mongolia"),
    ("MO", "MAC", "Macao"), ("MP", "MNP", "Northern Mariana Islands"), ("MQ", "MTQ", "Martinique"),
    ("MR", "MRT", "Mauritania"), ("MS", "MSR", "Montserrat"), ("MT", "MLT", "Malta"),
    ("MU", "MUS", "Mauritius"), ("MV", "MDV", "Maldives"), ("MW", "MWI", "Malawi"),
    ("MX", "MEX", "Mexico"), ("MY", "MYS", "Malaysia"), ("MZ", "MOZ", "Mozambique"),
    ("NA", "NAM", "Namibia"), ("NC", "NCL", "New Caledonia"), ("NE", "NER", "Niger"),
    ("NF", "NFK", "Norfolk Island"), ("NG", "NGA", "Nigeria"), ("NI", "NIC", "Nicaragua"),
    ("NL", "NLD", "Netherlands"), ("NO", "NOR", "Norway"), ("NP", "NPL", "Nepal"),
    ("NR", "NRU", "Nauru"), ("NU", "NIU", "Niue"), ("NZ", "NZL", "New Zealand"),
    ("OM", "OMN", "Oman"), ("PA", "PAN", "Panama"), ("PE", "PER", "Peru"),
    ("PF", "PYF", "French Polynesia"), ("PG", "PNG", "Papua New Guinea"), ("PH", "PHL", "Philippines"),
    ("PK", "PAK", "Pakistan"), ("PL", "POL", "Poland"), ("PM", "SPM", "Saint Pierre and Miquelon"),
    ("PN", "PCN", "Pitcairn"), ("PR", "PRI", "Puerto Rico"), ("PS", "PSE", "Palestine"),
    ("PT", "PRT", "Portugal"), ("PW", "PLW", "Palau"), ("PY", "PRY", "Paraguay"),
    ("QA", "QAT", "Qatar"), ("RE", "REU", "Reunion"), ("RO", "ROU", "Romania"),
    ("RS", "SRB", "Serbia"), ("RU", "RUS", "Russia"), ("RW", "RWA", "Rwanda"),
    ("SA", "SAU", "Saudi Arabia"), ("SB", "SLB", "Solomon Islands"), ("SC", "SYC", "Seychelles"),
    ("SD", "SDN", "Sudan"), ("SE", "SWE", "Sweden"), ("SG", "SGP", "Singapore"),
    ("SH", "SHN", "Saint Helena"), ("SI", "SVN", "Slovenia"), ("SJ", "SJM", "Svalbard and Jan Mayen"),
    ("SK", "SVK", "Slovakia"), ("SL", "SLE", "Sierra Leone"), ("SM", "SMR", "San Marino"),
    ("SN", "SEN", "Senegal"), ("SO", "SOM", "Somalia"), ("SR", "SUR", "Suriname"),
    ("SS", "SSD", "South Sudan"), ("ST", "STP", "Sao Tome and Principe"), ("SV", "SLV", "El Salvador"),
    ("SX", "SXM", "Sint Maarten"), ("SY", "SYR", "Syria"), ("SZ", "SWZ", "Eswatini"),
    ("TC", "TCA", "Turks and Caicos Islands"), ("TD", "TCD", "Chad"),
    ("TF", "ATF", "French Southern Territories"), ("TG", "TGO", "Togo"), ("TH", "THA", "Thailand"),
    ("TJ", "TJK", "Tajikistan"), ("TK", "TKL", "Tokelau"), ("TL", "TLS", "Timor-Leste"),
    ("TM", "TKM", "Turkmenistan"), ("TN", "TUN", "Tunisia"), ("TO", "TON", "Tonga"),
    ("TR", "TUR", "Turkey"), ("TT", "TTO", "Trinidad and Tobago"), ("TV", "TUV", "Tuvalu"),
    ("TW", "TWN", "Taiwan"), ("TZ", "TZA", "Tanzania"), ("UA", "UKR", "Ukraine"),
    ("UG", "UGA", "Uganda"), ("UM", "UMI", "United States Minor Outlying Islands"),
    ("US", "USA", "United States"), ("UY", "URY", "Uruguay"), ("UZ", "UZB", "Uzbekistan"),
    ("VA", "VAT", "Holy See"), ("VC", "VCT", "Saint Vincent and the Grenadines"),
    ("VE", "VEN", "Venezuela"), ("VG", "VGB", "British Virgin Islands"),
    ("VI", "VIR", "United States Virgin Islands"), ("VN", "VNM", "Vietnam"), ("VU", "VUT", "Vanuatu"),
    ("WF", "WLF", "Wallis and Futuna"), ("WS", "WSM", "Samoa"), ("YE", "YEM", "Yemen"),
    ("YT", "MYT", "Mayotte"), ("ZA", "ZAF", "South Africa"), ("ZM", "ZMB", "Zambia"),
    ("ZW", "ZWE", "Zimbabwe"),
];

/// Other spellings Didit, documents and MRZs use: official long names, older names, and the
/// codes that are not ISO (`UK`, `D` for Germany in German MRZs, `XK`/`XKX` for Kosovo).
#[rustfmt::skip]
const ALIASES: &[(&str, &str)] = &[
    ("UK", "GBR"), ("Great Britain", "GBR"), ("Britain", "GBR"), ("England", "GBR"),
    ("United Kingdom of Great Britain and Northern Ireland", "GBR"),
    ("United States of America", "USA"), ("USA", "USA"), ("America", "USA"),
    ("Russian Federation", "RUS"), ("Iran, Islamic Republic of", "IRN"),
    ("Islamic Republic of Iran", "IRN"), ("Korea, Democratic People's Republic of", "PRK"),
    ("Democratic People's Republic of Korea", "PRK"), ("DPRK", "PRK"),
    ("Korea, Republic of", "KOR"), ("Republic of Korea", "KOR"), ("Korea", "KOR"),
    ("Syrian Arab Republic", "SYR"), ("Venezuela, Bolivarian Republic of", "VEN"),
    ("Bolivarian Republic of Venezuela", "VEN"), ("Bolivia, Plurinational State of", "BOL"),
    ("Burma", "MMR"), ("Lao People's Democratic Republic", "LAO"), ("Viet Nam", "VNM"),
    ("Moldova, Republic of", "MDA"), ("Republic of Moldova", "MDA"),
    ("Tanzania, United Republic of", "TZA"), ("United Republic of Tanzania", "TZA"),
    ("Czech Republic", "CZE"), ("Turkiye", "TUR"), ("Türkiye", "TUR"),
    ("Ivory Coast", "CIV"), ("Côte d'Ivoire", "CIV"), ("Cape Verde", "CPV"),
    ("Swaziland", "SWZ"), ("Macedonia", "MKD"), ("The Netherlands", "NLD"), ("Holland", "NLD"),
    ("Congo, The Democratic Republic of the", "COD"), ("DR Congo", "COD"), ("DRC", "COD"),
    ("Republic of the Congo", "COG"), ("Congo-Brazzaville", "COG"),
    ("Libyan Arab Jamahiriya", "LBY"), ("Palestine, State of", "PSE"),
    ("State of Palestine", "PSE"), ("Taiwan, Province of China", "TWN"),
    ("Hong Kong SAR", "HKG"), ("Macau", "MAC"), ("Vatican", "VAT"), ("Vatican City", "VAT"),
    ("East Timor", "TLS"), ("Micronesia, Federated States of", "FSM"),
    ("Brunei", "BRN"), ("Åland Islands", "ALA"), ("Curaçao", "CUW"), ("Réunion", "REU"),
    ("Saint Barthélemy", "BLM"), ("São Tomé and Príncipe", "STP"), ("The Gambia", "GMB"),
    ("The Bahamas", "BHS"), ("Kosovo", "XKX"), ("XK", "XKX"), ("XKX", "XKX"),
    ("D", "DEU"), ("España", "ESP"), ("Deutschland", "DEU"),
];

/// ISO 3166-1 alpha-3 for an alpha-2 code, an alpha-3 code or an English name, ignoring case
/// and surrounding spaces; `None` when the value is none of those.
pub fn to_alpha3(value: &str) -> Option<&'static str> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let from_table = COUNTRIES.iter().find_map(|(alpha2, alpha3, name)| {
        (value.eq_ignore_ascii_case(alpha2)
            || value.eq_ignore_ascii_case(alpha3)
            || value.eq_ignore_ascii_case(name))
        .then_some(*alpha3)
    });
    from_table.or_else(|| {
        ALIASES
            .iter()
            .find(|(alias, _)| alias.to_lowercase() == value.to_lowercase())
            .map(|(_, alpha3)| *alpha3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_didit_uses_becomes_alpha3() {
        let cases = [
            ("ES", "ESP"),
            ("ESP", "ESP"),
            ("Spain", "ESP"),
            (" spain ", "ESP"),
            ("es", "ESP"),
            ("GB", "GBR"),
            ("UK", "GBR"),
            ("United States of America", "USA"),
            ("Iran, Islamic Republic of", "IRN"),
            ("North Korea", "PRK"),
            ("KP", "PRK"),
            ("Syrian Arab Republic", "SYR"),
            ("Russian Federation", "RUS"),
            ("BY", "BLR"),
            ("Burma", "MMR"),
            ("Türkiye", "TUR"),
            ("Czech Republic", "CZE"),
            ("D", "DEU"),
        ];
        for (input, expected) in cases {
            assert_eq!(to_alpha3(input), Some(expected), "{input}");
        }
    }

    #[test]
    fn unknown_values_are_not_guessed() {
        for input in ["", "  ", "Atlantis", "ZZ", "ZZZ"] {
            assert_eq!(to_alpha3(input), None, "{input}");
        }
    }

    #[test]
    fn the_table_has_every_iso_country_once() {
        assert_eq!(COUNTRIES.len(), 249);
        let mut alpha2: Vec<_> = COUNTRIES.iter().map(|c| c.0).collect();
        let mut alpha3: Vec<_> = COUNTRIES.iter().map(|c| c.1).collect();
        alpha2.sort_unstable();
        alpha2.dedup();
        alpha3.sort_unstable();
        alpha3.dedup();
        assert_eq!((alpha2.len(), alpha3.len()), (249, 249));
        for alias in ALIASES {
            assert!(
                alias.1 == "XKX" || alpha3.contains(&alias.1),
                "{alias:?} points at a known country"
            );
        }
    }
}
