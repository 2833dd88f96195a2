"""Words and sentence templates of the generated traffic: names, places, products, and
the user requests and support answers the workloads are built from."""

FIRST_NAMES = [
    "jane",
    "john",
    "maria",
    "wei",
    "aisha",
    "carlos",
    "olga",
    "sam",
    "priya",
    "tom",
    "lena",
    "omar",
    "yuki",
    "noah",
    "fatima",
    "liam",
]
LAST_NAMES = [
    "doe",
    "smith",
    "garcia",
    "chen",
    "khan",
    "lopez",
    "ivanova",
    "lee",
    "patel",
    "brown",
    "muller",
    "haddad",
    "tanaka",
    "wilson",
    "ali",
    "murphy",
]
EMAIL_DOMAINS = ["example.com", "gmail.com", "yahoo.com", "outlook.com", "corp.example.org"]

CITIES = [
    ("Springfield", "62704"),
    ("Denver", "80202"),
    ("Austin", "73301"),
    ("Seattle", "98101"),
    ("Boston", "02108"),
    ("Chicago", "60601"),
    ("Portland", "97201"),
    ("Phoenix", "85001"),
    ("Atlanta", "30301"),
    ("Miami", "33101"),
    ("Dallas", "75201"),
    ("San Diego", "92101"),
    ("Nashville", "37201"),
    ("Madison", "53703"),
    ("Raleigh", "27601"),
    ("Omaha", "68102"),
    ("Tucson", "85701"),
    ("Buffalo", "14201"),
    ("Sacramento", "94203"),
    ("Richmond", "23219"),
    ("Boise", "83702"),
    ("Fresno", "93650"),
    ("Tampa", "33601"),
    ("Pittsburgh", "15201"),
    ("Columbus", "43004"),
    ("Charlotte", "28202"),
    ("Detroit", "48201"),
    ("Memphis", "37501"),
    ("Baltimore", "21201"),
    ("Milwaukee", "53202"),
    ("Albuquerque", "87101"),
    ("Kansas City", "64101"),
    ("Oakland", "94601"),
    ("Tulsa", "74103"),
    ("Cleveland", "44101"),
    ("Honolulu", "96801"),
    ("Anchorage", "99501"),
    ("Salt Lake City", "84101"),
    ("Orlando", "32801"),
    ("Louisville", "40202"),
]
# politeness around a request; they never carry a tool keyword
GREETINGS = [
    "Hi! ",
    "Hello. ",
    "Hey there! ",
    "Good morning! ",
    "Sorry to bother you. ",
    "Quick question. ",
    "Hi team. ",
]
THANKS = [" Thanks!", " Thank you.", " Thanks in advance.", " Appreciate it!", " Thanks a lot."]
STREETS = [
    "Main St",
    "Oak Ave",
    "Maple Dr",
    "Pine St",
    "Cedar Ln",
    "Elm St",
    "Lake Rd",
    "Hill St",
    "Park Ave",
    "River Rd",
    "Sunset Blvd",
    "Birch Way",
    "Church St",
    "Market St",
    "2nd Ave",
    "Washington St",
]
CANCEL_REASONS = [
    "I ordered the wrong size",
    "I found a better price elsewhere",
    "it is taking too long to ship",
    "I no longer need it",
    "I ordered it by mistake",
    "the delivery date is too late",
    "I want a different color",
]
COUPONS = [
    "SAVE10",
    "WELCOME15",
    "FREESHIP",
    "HOLIDAY25",
    "SPRING20",
    "VIP30",
    "BACK2SCHOOL",
    "FLASH40",
    "THANKYOU5",
    "NEWYEAR50",
]

# (product, synonyms) used by search_products, support_chat and query_rewrite
PRODUCTS = [
    ("wireless earbuds", ["bluetooth earbuds", "true wireless earphones"]),
    ("running shoes", ["jogging sneakers", "road running trainers"]),
    ("laptop backpack", ["computer backpack", "notebook bag"]),
    ("coffee maker", ["drip coffee machine", "coffee brewer"]),
    ("yoga mat", ["exercise mat", "pilates mat"]),
    ("phone case", ["smartphone cover", "protective phone case"]),
    ("desk lamp", ["led task light", "reading lamp"]),
    ("winter jacket", ["insulated coat", "parka"]),
    ("water bottle", ["insulated bottle", "hydration flask"]),
    ("gaming mouse", ["wired gaming mouse", "rgb mouse"]),
    ("air fryer", ["oil-free fryer", "convection fryer"]),
    ("hiking boots", ["trekking boots", "waterproof hiking shoes"]),
    ("mechanical keyboard", ["gaming keyboard", "hot-swappable keyboard"]),
    ("baby stroller", ["pushchair", "travel stroller"]),
    ("standing desk", ["sit-stand desk", "height adjustable desk"]),
    ("electric toothbrush", ["sonic toothbrush", "rechargeable toothbrush"]),
    ("smart watch", ["fitness smartwatch", "activity tracker watch"]),
    ("camping tent", ["backpacking tent", "4 person tent"]),
]
ADJECTIVES = [
    ("", ""),
    ("", ""),
    ("cheap", "affordable"),
    ("best", "top rated"),
    ("waterproof", "waterproof"),
    ("kids", "kids"),
    ("lightweight", "lightweight"),
    ("new", "latest"),
    ("used", "refurbished"),
]
QUALIFIERS = [
    ("", ""),
    ("", ""),
    ("for men", "for men"),
    ("for women", "for women"),
    ("under 50", "price under 50 USD"),
    ("under 100", "price under 100 USD"),
    ("with free shipping", "with free shipping"),
    ("for travel", "for travel"),
    ("black", "in black"),
    ("on sale", "on sale"),
]
ABBREVIATIONS = {"for": "4", "with": "w/", "under": "<", "and": "&", "black": "blk", "shipping": "shpping"}

# tool_router requests, per tool; every argument appears verbatim in the sentence
ROUTER_TEMPLATES: dict[str, list[str]] = {
    "get_order_status": [
        "What is the status of order {order_id}?",
        "Can you check the status of my order {order_id}?",
        "Any status update on order {order_id}?",
        "Status check for order {order_id}, please.",
        "My order {order_id} still says processing, what is its status?",
    ],
    "cancel_order": [
        "Please cancel order {order_id} because {reason}.",
        "I need to cancel my order {order_id} because {reason}.",
        "Cancel order {order_id}, {reason}.",
        "Can you cancel {order_id}? Reason: {reason}.",
    ],
    "track_shipment": [
        "Track my package with tracking number {tracking_number}.",
        "Can you track shipment {tracking_number} for me?",
        "Tracking number {tracking_number} has not moved in days, can you track it?",
        "What does the tracking for {tracking_number} say?",
    ],
    "update_address": [
        "Please change the shipping address for order {order_id} to {street}, {city} {zip}.",
        "Update the address on {order_id} to {street}, {city}, {zip}.",
        "I moved, change the address of order {order_id} to {street}, {city} {zip}.",
        "New delivery address for order {order_id}: {street}, {city} {zip}.",
    ],
    "issue_refund": [
        "I want a refund of ${amount} for order {order_id}.",
        "Please refund ${amount} on order {order_id}, the item arrived damaged.",
        "Order {order_id} was overcharged, refund me ${amount}.",
        "Can I get a refund? ${amount} for {order_id}.",
    ],
    "search_products": [
        "Search for {query}, show me {max_results} results.",
        "Search the catalog for {query} and list {max_results} products.",
        "Can you search {query}? Top {max_results} please.",
        "I'm searching for {query}, give me {max_results} options.",
    ],
    "find_store": [
        "Is there a store near {city}?",
        "Find the nearest store in {city}.",
        "What are your store locations in {city}?",
        "Do you have a physical store in {city}?",
    ],
    "apply_coupon": [
        "Apply coupon {code} to order {order_id}.",
        "I forgot to use coupon code {code} on order {order_id}.",
        "Can you add promo code {code} to {order_id}?",
        "Please use coupon {code} for my order {order_id}.",
    ],
}
EXCHANGE_TEMPLATES = [
    "I'd like to exchange the item from order {order_id} for size {size}.",
    "Exchange my order {order_id} for a size {size}, it doesn't fit.",
    "Could you swap order {order_id} for size {size}?",
]

# support_chat: (questions, answers) per topic
SUPPORT_TOPICS: list[tuple[list[str], list[str]]] = [
    (
        [
            "What is your return policy for {product}?",
            "Can I return {product} I bought last week?",
            "How many days do I have to return {product}?",
        ],
        [
            "You can return {product} within 30 days of delivery for a full refund, as long as it "
            "is unused and in its original packaging. Start the return from Orders in your account.",
            "Returns of {product} are accepted within 30 days of delivery. Print the prepaid label "
            "from your account and drop the package at any carrier location.",
        ],
    ),
    (
        [
            "How long does standard shipping take?",
            "When will my {product} arrive with standard shipping?",
            "How fast is your shipping?",
        ],
        [
            "Standard shipping takes 3-5 business days within the continental US. Express shipping "
            "arrives in 1-2 business days.",
            "Most orders arrive in 3-5 business days with standard shipping. You get a tracking "
            "link by email as soon as the package leaves our warehouse.",
        ],
    ),
    (
        [
            "Do you ship {product} internationally?",
            "Can I get {product} shipped to Canada?",
            "Which countries do you ship to?",
        ],
        [
            "We ship to over 40 countries, including Canada, the UK and most of the EU. Duties and "
            "taxes are calculated at checkout.",
            "Yes, we ship internationally to more than 40 countries. Delivery usually takes 7-14 business days.",
        ],
    ),
    (
        [
            "What payment methods do you accept for {product}?",
            "Can I pay for {product} with PayPal?",
            "Do you accept Apple Pay for {product}?",
        ],
        [
            "We accept Visa, Mastercard, American Express, PayPal, Apple Pay and Google Pay. "
            "Gift cards can be combined with any of them.",
            "You can pay with all major credit cards, PayPal, Apple Pay or Google Pay.",
        ],
    ),
    (
        [
            "What does the warranty on {product} cover?",
            "Is {product} covered by a warranty?",
            "How do I make a warranty claim for {product}?",
        ],
        [
            "{product_cap} comes with a one-year limited warranty covering manufacturing defects. "
            "Open a claim from the product page in your order history.",
            "Our one-year warranty covers defects in materials and workmanship of {product}. It "
            "does not cover accidental damage.",
        ],
    ),
    (
        [
            "Do you price match on {product}?",
            "I saw {product} cheaper elsewhere, will you match the price?",
            "Is there a price match guarantee?",
        ],
        [
            "Yes, we match the price of major US retailers for identical items in stock. Contact "
            "us within 14 days of purchase with a link to the lower price.",
            "We offer price matching on identical items from major retailers within 14 days of purchase.",
        ],
    ),
    (
        [
            "Do gift cards expire?",
            "Can I use a gift card to buy {product}?",
            "Can I pay for {product} with a gift card?",
            "How do I check my gift card balance?",
        ],
        [
            "Our gift cards never expire and can be used on any product, including {product}. "
            "Check the balance under Account > Gift cards.",
            "Gift cards have no expiration date or fees. You can check the balance at checkout or in your account.",
        ],
    ),
    (
        [
            "How do I delete my account?",
            "Can you close my account and remove my data?",
            "How can I delete my personal data?",
            "I bought {product} once, how do I delete my account now?",
        ],
        [
            "You can delete your account under Account > Privacy > Delete account. Your data is "
            "removed within 30 days, except what we must keep for tax purposes.",
            "Go to Account > Privacy and choose Delete account. We confirm by email once your data has been erased.",
        ],
    ),
    (
        [
            "Can I change the color of {product} after ordering?",
            "Can I modify my order before it ships?",
            "How do I add an item to an order I already placed?",
        ],
        [
            "Orders can be changed within one hour of purchase from Orders > Edit order. After "
            "that, you can return the item and place a new order.",
            "You can edit an order for up to one hour after placing it. Once it is packed, changes "
            "are no longer possible.",
        ],
    ),
    (
        [
            "What are the benefits of the Plus membership?",
            "Is the Plus membership worth it for buying {product}?",
            "How much does Plus membership cost?",
        ],
        [
            "Plus costs $49 per year and includes free 2-day shipping, early access to sales and "
            "extended 60-day returns.",
            "Plus members get free 2-day shipping, 60-day returns and member-only discounts for $49 a year.",
        ],
    ),
]
