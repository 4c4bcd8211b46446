from domain.errors import DomainError
from domain.profiles import ProfileChanges
from domain.profiles import update_profile as update
from resolvers.context import Info
from schema.accounts import MeGQL, ProfileInput, UpdateProfileResult
from schema.errors import error_member


async def update_profile(info: Info, input: ProfileInput) -> UpdateProfileResult:
    principal = await info.context.require_user()
    ports = info.context.ports
    changes = ProfileChanges(
        display_name=input.display_name, bio=input.bio, gender=input.gender, show_me=input.show_me,
        interest_tags=input.interest_tags, age_min=input.age_min, age_max=input.age_max,
        max_distance_km=input.max_distance_km, visibility=input.visibility, show_activity=input.show_activity,
        show_read_receipts=input.show_read_receipts,
    )
    try:
        user = await update(ports.users, ports.events, principal.user_id, changes, ports.clock())
    except DomainError as exc:
        return error_member(exc)
    return MeGQL.from_domain(user, ports.clock().date())
